"""Counters of the environment cluster, as a plain snapshot, and the utilization arithmetic.

Utilization of a worker = time it spent inside environment constructors/resets/steps / wall time.
A snapshot is cumulative since the cluster started; `later.since(earlier)` gives one interval, which
is what a tracker logs every few seconds (`to_metrics()` -> `env/...` names).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


def utilization(busy_s: float, wall_s: float) -> float:
    """Busy fraction in [0, 1]; 0 for an empty interval (clamped: busy time is measured in the worker,
    wall time in the parent, and the two clocks may disagree by a little)."""
    if wall_s <= 0:
        return 0.0
    return min(1.0, max(0.0, busy_s / wall_s))


@dataclass(frozen=True)
class ClusterStats:
    wall_s: float  # since the cluster started (or the interval's length, for `since`)
    episodes: int  # episodes routed to a worker (reset sent)
    episodes_active: int  # episodes in flight right now (a gauge: `since` keeps the later value)
    resets: int  # resets that returned an observation
    steps: int  # steps that returned a StepResult
    errors: int  # episodes that ended with an EpisodeError (each counted once)
    exceptions: int  # resets/steps that raised inside the environment
    timeouts: int  # resets/steps that ran past their timeout (their worker is killed and replaced)
    crashes: int  # worker processes that died on their own
    restarts: int  # worker processes started to replace a lost one
    worker_busy_s: tuple[float, ...]  # per worker index (across its replacements)

    @property
    def worker_utilization(self) -> tuple[float, ...]:
        return tuple(utilization(busy_s, self.wall_s) for busy_s in self.worker_busy_s)

    @property
    def utilization(self) -> float:
        """Mean over workers: the fraction of the pool's capacity spent inside environments."""
        return utilization(sum(self.worker_busy_s), self.wall_s * len(self.worker_busy_s))

    def since(self, earlier: "ClusterStats") -> "ClusterStats":
        """The interval between `earlier` and this snapshot."""
        if len(earlier.worker_busy_s) != len(self.worker_busy_s):
            raise ValueError("snapshots of clusters with different worker counts")
        deltas = {
            field.name: getattr(self, field.name) - getattr(earlier, field.name)
            for field in fields(self)
            if field.name not in ("episodes_active", "worker_busy_s")
        }
        busy = tuple(later - before for later, before in zip(self.worker_busy_s, earlier.worker_busy_s))
        return ClusterStats(**deltas, episodes_active=self.episodes_active, worker_busy_s=busy)

    def to_metrics(self, prefix: str = "env/") -> dict[str, float]:
        metrics: dict[str, float] = {
            f"{prefix}{field.name}": float(getattr(self, field.name))
            for field in fields(self)
            if field.name != "worker_busy_s"
        }
        metrics[f"{prefix}steps_per_s"] = self.steps / self.wall_s if self.wall_s > 0 else 0.0
        metrics[f"{prefix}utilization"] = self.utilization
        for index, value in enumerate(self.worker_utilization):
            metrics[f"{prefix}worker_{index}/utilization"] = value
        return metrics
