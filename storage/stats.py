"""Per-problem statistics that curation reads (difficulty, budgets): pure functions over Arrow."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

# The columns problem_stats reads: the store scans only these.
STATS_COLUMNS = ("environment", "problem_id", "success", "reward", "max_policy_version", "created_at")


def problem_stats(trajectories: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """One row per (environment, problem_id): attempts, successes, success_rate, mean_reward,
    last_policy_version (newest version that attempted it) and last_seen_at; sorted by key."""
    frame = trajectories if isinstance(trajectories, pl.DataFrame) else pl.from_arrow(trajectories)
    frame = frame.select(STATS_COLUMNS)
    return (
        frame.group_by("environment", "problem_id")
        .agg(
            pl.len().cast(pl.Int64).alias("attempts"),
            pl.col("success").cast(pl.Int64).sum().alias("successes"),
            pl.col("reward").mean().alias("mean_reward"),
            pl.col("max_policy_version").max().alias("last_policy_version"),
            pl.col("created_at").max().alias("last_seen_at"),
        )
        .with_columns((pl.col("successes") / pl.col("attempts")).alias("success_rate"))
        .select(
            "environment",
            "problem_id",
            "attempts",
            "successes",
            "success_rate",
            "mean_reward",
            "last_policy_version",
            "last_seen_at",
        )
        .sort("environment", "problem_id")
    )
