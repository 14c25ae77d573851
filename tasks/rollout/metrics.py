"""Counters of the rollout service and their `rollout/` metrics (plain data, no I/O)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dartflow.storage.records import TrajectoryRecord

FINISH_REASONS = ("done", "truncated", "error", "interrupted")


@dataclass
class OccupancyClock:
    """Time integral of a level (episodes in flight): slot-seconds and seconds spent at zero."""

    level: int = 0
    since: float | None = None
    level_seconds: float = 0.0
    idle_seconds: float = 0.0

    def set(self, level: int, now: float) -> None:
        self.advance(now)
        self.level = level

    def advance(self, now: float) -> None:
        if self.since is not None:
            elapsed = now - self.since
            self.level_seconds += self.level * elapsed
            if self.level == 0:
                self.idle_seconds += elapsed
        self.since = now


@dataclass
class RolloutCounters:
    """Cumulative since the service started."""

    trajectories: int = 0  # finished episodes (requeued ones not counted)
    groups_written: int = 0
    writes: int = 0  # store appends (commits); several groups may share one
    trajectories_written: int = 0
    groups_started: int = 0
    episodes_started: int = 0  # attempts, reruns included
    requeued: int = 0
    turns: int = 0
    turns_spanning_versions: int = 0  # a weight swap landed inside the turn's response
    response_tokens: int = 0
    successes: int = 0
    reward_sum: float = 0.0
    finish_reasons: Counter = field(default_factory=Counter)
    generation_seconds: float = 0.0
    environment_seconds: float = 0.0
    write_seconds: float = 0.0
    gate_waits: dict[str, int] = field(default_factory=lambda: {"ahead": 0, "behind": 0})
    gate_wait_seconds: float = 0.0

    def add_trajectory(self, record: TrajectoryRecord) -> None:
        self.trajectories += 1
        self.finish_reasons[record.finish_reason] += 1
        self.successes += bool(record.success)
        self.turns += len(record.turns)
        for turn in record.turns:
            self.response_tokens += len(turn.response_token_ids)
            self.reward_sum += turn.reward
            self.generation_seconds += turn.generation_seconds
            self.environment_seconds += turn.environment_seconds
            if turn.max_policy_version is not None and turn.max_policy_version != turn.min_policy_version:
                self.turns_spanning_versions += 1

    def add_interrupted(self) -> None:
        self.requeued += 1
        self.finish_reasons["interrupted"] += 1


def rollout_metrics(
    counters: RolloutCounters,
    clock: OccupancyClock,
    *,
    wall_s: float,
    concurrent_episodes: int,
    policy_version: int | None = None,
    trainer_version: int | None = None,
    last_swap_s: float | None = None,
    prefix: str = "rollout/",
) -> dict[str, float]:
    """Flat metrics with stable names (the same in MLflow as here)."""
    c, finished = counters, max(counters.trajectories, 1)
    busy_s = wall_s - clock.idle_seconds  # with at least one episode in flight
    metrics = {
        "tokens_per_s": c.response_tokens / wall_s if wall_s > 0 else 0.0,
        "tokens_per_busy_s": c.response_tokens / busy_s if busy_s > 0 else 0.0,
        "episodes_per_s": c.trajectories / wall_s if wall_s > 0 else 0.0,
        "episodes": c.trajectories,
        "episodes_started": c.episodes_started,
        "groups_started": c.groups_started,
        "groups_written": c.groups_written,
        "writes": c.writes,
        "trajectories_written": c.trajectories_written,
        "requeued": c.requeued,
        "response_tokens": c.response_tokens,
        "turns": c.turns,
        "turns_per_episode": c.turns / finished,
        "turns_spanning_versions": c.turns_spanning_versions,
        "success_rate": c.successes / finished,
        "reward_mean": c.reward_sum / finished,
        "generation_s": c.generation_seconds,
        "environment_s": c.environment_seconds,
        "write_s": c.write_seconds,
        "staleness_gate_waits": sum(c.gate_waits.values()),
        "staleness_gate_waits_ahead": c.gate_waits["ahead"],
        "staleness_gate_waits_behind": c.gate_waits["behind"],
        "staleness_gate_wait_s": c.gate_wait_seconds,
        "idle_fraction": clock.idle_seconds / wall_s if wall_s > 0 else 0.0,
        "slot_utilization": clock.level_seconds / (wall_s * concurrent_episodes) if wall_s > 0 else 0.0,
        "in_flight": clock.level,
        "wall_s": wall_s,
    }
    for reason in FINISH_REASONS:
        metrics[f"finish/{reason}"] = c.finish_reasons.get(reason, 0)
    optional = {"policy_version": policy_version, "trainer_version": trainer_version, "swap_s": last_swap_s}
    metrics.update({name: value for name, value in optional.items() if value is not None})
    return {f"{prefix}{name}": float(value) for name, value in metrics.items()}
