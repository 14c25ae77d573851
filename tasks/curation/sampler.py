"""The curated sampler: the rollout service's GroupSampler when a sampler-side rule is on.

It works in rounds. At the start of a round it draws candidate problems from the uniform sampler
(the same environments, weights and split), reads the attempts made so far (a callable, so the
store stays outside this module), and applies the pure rules: difficulty estimate, then rollout
count and turn limit per problem. The round's groups are then handed out one by one; when they run
out, the next round reads the attempts again. Problems drawn twice in a round are planned once.

    candidates ──► with_untried(stats) ──► estimate_difficulty ──► rollout_counts ──► turn_limits
                                                                        │
                   GroupSpec(problem, group_size, max_turns=turn_limit) ◄┘

Every round leaves a trace: `round_metrics` (problems and rollouts per difficulty bucket, mean
turn limit) and `problem_table()` (the latest plan of every problem planned so far), which the
flow logs to MLflow.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import polars as pl
import pyarrow as pa

from dartflow.storage.stats import problem_stats
from dartflow.tasks.curation.budgets import bucket_summary, rollout_counts, turn_limits
from dartflow.tasks.curation.difficulty import counted_attempts, estimate_difficulty, problem_frame, with_untried
from dartflow.tasks.curation.settings import CurationConfig
from dartflow.tasks.rollout.sampler import GroupSpec, UniformSampler

# The columns a round reads from the store: what counted_attempts and problem_stats need.
ATTEMPT_COLUMNS = (
    "environment", "problem_id", "success", "reward", "max_policy_version", "created_at", "source", "finish_reason",
)
# Columns of problem_table(): one row per problem, its latest plan.
PLAN_COLUMNS = (
    "round", "environment", "problem_id", "level", "attempts", "successes", "posterior_success", "difficulty",
    "bucket", "group_size", "turn_limit",
)


def sampler_rules_on(curation: CurationConfig) -> bool:
    """Whether any rule the sampler applies is switched on (otherwise the uniform sampler is used)."""
    return curation.rollout_budget.enabled or curation.turn_limit.enabled


class CuratedSampler:
    """Rounds of groups sized and turn-limited by each problem's measured difficulty."""

    def __init__(
        self,
        uniform: UniformSampler,
        curation: CurationConfig,
        *,
        max_turns: int,
        read_attempts: Callable[[], pa.Table | pl.DataFrame],
        policy_version: Callable[[], int] = lambda: 0,
    ):
        self.uniform = uniform
        self.curation = curation
        self.max_turns = max_turns
        self.read_attempts = read_attempts
        self.policy_version = policy_version
        self.rounds = 0
        self.round_metrics: dict[str, float] = {}
        self._queue: deque[GroupSpec] = deque()
        self._latest_plan: dict[str, dict[str, Any]] = {}

    @property
    def rollouts_per_round(self) -> int:
        budget = self.curation.rollout_budget
        return budget.rollouts_per_round if budget.enabled else 4 * self.uniform.group_size

    async def next_group(self) -> GroupSpec | None:
        if not self._queue:
            # Reading the store and planning is blocking work: off the event loop.
            self._queue.extend(await asyncio.to_thread(self.plan_round))
        return self._queue.popleft() if self._queue else None

    def plan_round(self) -> list[GroupSpec]:
        """Draw candidates, read the attempts, and return this round's groups (also kept as metrics)."""
        drawn: dict[str, GroupSpec] = {}
        # As many problems as the uniform sampler would run with this many rollouts: the rules
        # then move rollouts between them (solved ones get fewer, hard ones more).
        for _ in range(max(1, self.rollouts_per_round // self.uniform.group_size)):
            spec = self.uniform.next_group()
            drawn.setdefault(spec.problem.problem_id, spec)
        frame = self.plan(list(drawn.values()))
        self.rounds += 1
        groups = []
        for row in frame.iter_rows(named=True):
            if row["group_size"] > 0:
                base = drawn[row["problem_id"]]
                turns = row["turn_limit"] if row["turn_limit"] < self.max_turns else None
                groups.append(
                    GroupSpec(
                        base.problem, row["group_size"], params=base.params, max_turns=turns,
                        metadata={"curation": {"round": self.rounds, "bucket": row["bucket"], "turn_limit": row["turn_limit"]}},
                    )
                )
            self._latest_plan[row["problem_id"]] = {"round": self.rounds, **{k: row[k] for k in PLAN_COLUMNS if k != "round"}}
        self.round_metrics = {
            "curation/round": float(self.rounds),
            "curation/round_groups": float(len(groups)),
            "curation/turn_limit_mean": float(frame["turn_limit"].mean()),
            **bucket_summary(frame),
        }
        return groups

    def plan(self, groups: list[GroupSpec]) -> pl.DataFrame:
        """The round's plan for these candidate groups: difficulty, group_size and turn_limit per problem."""
        rules = self.curation
        attempts = counted_attempts(
            self.read_attempts(), current_version=self.policy_version(), recent_versions=rules.difficulty.recent_versions
        )
        candidates = with_untried(problem_frame(g.problem for g in groups), problem_stats(attempts))
        frame = estimate_difficulty(
            candidates, prior_alpha=rules.difficulty.prior_alpha, prior_beta=rules.difficulty.prior_beta
        )
        budget = rules.rollout_budget
        if budget.enabled:
            frame = rollout_counts(
                frame, min_size=budget.min_group_size, max_size=budget.max_group_size,
                budget=budget.rollouts_per_round, hit_probability=budget.hit_probability,
            )
        else:
            frame = frame.with_columns(pl.lit(self.uniform.group_size, dtype=pl.Int64).alias("group_size"))
        limit = rules.turn_limit
        if limit.enabled:
            frame = turn_limits(frame, min_turns=limit.min_turns, max_turns=limit.max_turns, env_max_turns=self.max_turns)
        else:
            frame = frame.with_columns(
                pl.min_horizontal(
                    pl.lit(self.max_turns, dtype=pl.Int64), pl.col("problem_max_turns").fill_null(self.max_turns)
                ).alias("turn_limit")
            )
        return frame

    def problem_table(self) -> pa.Table:
        """The latest plan of every problem planned so far (difficulty, attempts, budget, turn limit)."""
        rows = list(self._latest_plan.values())
        frame = pl.DataFrame(rows) if rows else pl.DataFrame(schema={c: pl.String for c in PLAN_COLUMNS})
        if rows:
            frame = frame.with_columns(pl.col("bucket").cast(pl.String))
        return frame.to_arrow()
