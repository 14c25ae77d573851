"""How hard each problem is for the current policy, measured from its attempts in the store.

The pipeline, all pure (the caller reads the rows and the problem list):

    rows = counted_attempts(trajectories, current_version=v, recent_versions=cfg.recent_versions)
    frame = estimate_difficulty(with_untried(problem_frame(candidates), problem_stats(rows)),
                                prior_alpha=cfg.prior_alpha, prior_beta=cfg.prior_beta)

Recency is a window over policy versions, applied to the raw rows before `problem_stats`: an attempt
counts while its `max_policy_version` (its newest token) is one of the last `recent_versions`
versions. A window (rather than a decay) keeps counts whole, so the posterior reads as "s successes
in n recent attempts", and it is the same filter the store can push down to its scan.

Posterior success of a problem with s successes in n counted attempts, under a Beta(a, b) prior:
(s + a) / (n + a + b). difficulty = 1 - that = (n - s + b) / (n + a + b). A problem with no counted
attempt is `unknown`: its posterior is the prior mean, and it is never put in a difficulty bucket.

Buckets, on the posterior success p (so that few attempts never make a bucket at the extremes:
with Beta(1,1), "solved" needs 8 successes in 8 attempts, "hopeless" 0 in 8):

    hopeless  p <= 0.1      hard  0.1 < p <= 0.4      medium  0.4 < p < 0.6
    easy      0.6 <= p < 0.9                          solved  p >= 0.9
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl
import pyarrow as pa

from dartflow.tasks.envs.protocol import Problem

BUCKETS = ("unknown", "hopeless", "hard", "medium", "easy", "solved")
HOPELESS_AT_MOST = 0.1  # posterior success <= this: hopeless
HARD_AT_MOST = 0.4  # <= this: hard
EASY_AT_LEAST = 0.6  # >= this: easy (between the two: medium)
SOLVED_AT_LEAST = 0.9  # >= this: solved

# Rows that are not the policy's own attempt at a problem: scripted demonstrations and pooled
# copies always succeed; an environment error or an interrupted episode says nothing about the policy.
NOT_ATTEMPT_SOURCES = ("demonstration", "pool")
NOT_ATTEMPT_FINISHES = ("error", "interrupted")

KEY = ("environment", "problem_id")


def counted_attempts(
    trajectories: pa.Table | pl.DataFrame,
    *,
    current_version: int | None = None,
    recent_versions: int | None = None,
) -> pl.DataFrame:
    """The trajectory rows that count as the policy's attempts, ready for `storage.stats.problem_stats`.

    Kept: rows with source "rollout" that did not end in error/interrupted (each filter only when
    its column is present), and, when `recent_versions` is set, whose max_policy_version is one of
    the last `recent_versions` versions up to `current_version`: max_policy_version > current - N.
    """
    frame = trajectories if isinstance(trajectories, pl.DataFrame) else pl.from_arrow(trajectories)
    if "source" in frame.columns:
        frame = frame.filter(~pl.col("source").is_in(NOT_ATTEMPT_SOURCES))
    if "finish_reason" in frame.columns:
        frame = frame.filter(~pl.col("finish_reason").is_in(NOT_ATTEMPT_FINISHES))
    if recent_versions is None:
        return frame
    if recent_versions < 1:
        raise ValueError(f"recent_versions must be >= 1 or None, got {recent_versions}")
    if current_version is None:
        raise ValueError("current_version is required when recent_versions is set")
    return frame.filter(pl.col("max_policy_version") > current_version - recent_versions)


def problem_frame(problems: Iterable[Problem]) -> pl.DataFrame:
    """One row per candidate problem: environment, problem_id, level (the environment's own
    difficulty label, `Problem.difficulty`) and problem_max_turns (its own turn bound, or null)."""
    problems = list(problems)
    return pl.DataFrame(
        {
            "environment": [p.environment for p in problems],
            "problem_id": [p.problem_id for p in problems],
            "level": [float(p.difficulty) for p in problems],
            "problem_max_turns": [p.max_turns for p in problems],
        },
        schema={"environment": pl.String, "problem_id": pl.String, "level": pl.Float64, "problem_max_turns": pl.Int64},
    )


def with_untried(problems: pl.DataFrame, stats: pl.DataFrame) -> pl.DataFrame:
    """The candidate problems (rows and order of `problems`) with their stats joined on
    (environment, problem_id); a problem absent from `stats` gets attempts = successes = 0 and
    nulls elsewhere, so that it comes out of `estimate_difficulty` as unknown, not as easy."""
    missing = [c for c in KEY if c not in problems.columns]
    if missing:
        raise ValueError(f"problems frame lacks key column(s) {missing}")
    # Keys typed like the candidates': an empty stats frame may come with null-typed columns.
    stats = stats.with_columns(pl.col(k).cast(problems.schema[k]) for k in KEY)
    joined = problems.join(stats, on=list(KEY), how="left", maintain_order="left")
    return joined.with_columns(
        pl.col("attempts").fill_null(0).cast(pl.Int64), pl.col("successes").fill_null(0).cast(pl.Int64)
    )


def estimate_difficulty(stats: pl.DataFrame, *, prior_alpha: float = 1.0, prior_beta: float = 1.0) -> pl.DataFrame:
    """`stats` (columns attempts, successes; nulls read as 0) plus posterior_success, difficulty,
    unknown and bucket (see the module docstring for the formulas and thresholds)."""
    for name, value in (("prior_alpha", prior_alpha), ("prior_beta", prior_beta)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    attempts = pl.col("attempts").fill_null(0).cast(pl.Float64)
    successes = pl.col("successes").fill_null(0).cast(pl.Float64)
    pseudo_total = attempts + prior_alpha + prior_beta
    p = pl.col("posterior_success")
    bucket = (
        pl.when(pl.col("unknown")).then(pl.lit("unknown"))
        .when(p <= HOPELESS_AT_MOST).then(pl.lit("hopeless"))
        .when(p <= HARD_AT_MOST).then(pl.lit("hard"))
        .when(p < EASY_AT_LEAST).then(pl.lit("medium"))
        .when(p < SOLVED_AT_LEAST).then(pl.lit("easy"))
        .otherwise(pl.lit("solved"))
    )
    return (
        stats.with_columns(
            ((successes + prior_alpha) / pseudo_total).alias("posterior_success"),
            # From the failures directly, not 1 - p: no rounding error at the bucket edges.
            ((attempts - successes + prior_beta) / pseudo_total).alias("difficulty"),
            (attempts == 0).alias("unknown"),
        )
        .with_columns(bucket.cast(pl.Enum(BUCKETS)).alias("bucket"))
    )
