"""How many rollouts and how many turns each problem of a round gets, from its difficulty.

Rollout count (the "hit" rule). A group trains only if its rewards differ, and for a hard problem
what is missing is a success. So a problem with posterior success p gets the smallest group in which
at least one rollout succeeds with probability `hit_probability` h:

    target = ceil(log(1 - h) / log(1 - p)),   clamped to [min_size, max_size]

This grows as p falls (p = 0.5 -> 1, 0.2 -> 4, 0.1 -> 7 at h = 0.5): hard problems get the most.
Solved and hopeless problems (difficulty buckets) get min_size: more rollouts would teach nothing on
the first and almost never hit on the second (the experience pool's job). Unknown problems use
their prior mean, so the prior says how hard a new problem is assumed to be. The plug-in posterior
mean is used, not the posterior predictive: the Beta prior already shrinks few-attempt estimates.

Budget. Rows are served in frame order (the caller's priority). Each problem first gets min_size
while the budget lasts: with budget < min_size x problems only the first budget // min_size
problems get a group this round (group_size 0 for the rest), since a group below min_size has no
comparison. What remains is shared among the served problems in proportion to their wish above
min_size (target - min_size); the integer shares come from the largest-remainder method, ties to the
earlier row. No group ever exceeds its target, and the sum never exceeds the budget.

Turn limit. Linear in difficulty d: min_turns + round((max_turns - min_turns) * d), half up, then
capped by the environment's bound (env_max_turns, and the problem's own max_turns if it has one).
Unknown problems get that bound: nothing says they are short.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from dartflow.tasks.curation.difficulty import BUCKETS

# Float slack for ceil/floor of values that are whole numbers in exact arithmetic.
_EPS = 1e-9
SMALLEST_GROUPS = ("solved", "hopeless")


def target_group_size(posterior_success: float, *, min_size: int, max_size: int, hit_probability: float) -> int:
    """Smallest group with P(at least one success) >= hit_probability at success rate
    `posterior_success`, clamped to [min_size, max_size]."""
    if not 0.0 < posterior_success < 1.0:
        raise ValueError(f"posterior_success must be in (0, 1), got {posterior_success}")
    wanted = math.ceil(math.log1p(-hit_probability) / math.log1p(-posterior_success) - _EPS)
    return int(min(max(wanted, min_size), max_size))


def _check_sizes(min_size: int, max_size: int, budget: int, hit_probability: float) -> None:
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2 (a group needs a comparison), got {min_size}")
    if max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not 0.0 < hit_probability < 1.0:
        raise ValueError(f"hit_probability must be in (0, 1), got {hit_probability}")


def share_budget(targets: list[int], *, min_size: int, budget: int) -> list[int]:
    """Group sizes for `targets` (each >= min_size) in priority order, summing to <= budget (see
    the module docstring: min_size first in order, then largest remainders of proportional shares)."""
    served = min(len(targets), budget // min_size)
    sizes = [min_size] * served + [0] * (len(targets) - served)
    wishes = [t - min_size for t in targets[:served]]
    left = budget - served * min_size
    if sum(wishes) <= left:
        return [t if i < served else 0 for i, t in enumerate(targets)]
    shares = [left * w / sum(wishes) for w in wishes]
    whole = [math.floor(s + _EPS) for s in shares]
    leftover = left - sum(whole)
    # Largest fractional part first; the stable sort gives ties to the earlier row.
    by_remainder = sorted(range(served), key=lambda i: -(shares[i] - whole[i]))
    for i in by_remainder[:leftover]:
        whole[i] += 1
    return [size + extra for size, extra in zip(sizes, whole)] + sizes[served:]


def rollout_counts(
    difficulty_frame: pl.DataFrame,
    *,
    min_size: int,
    max_size: int,
    budget: int,
    hit_probability: float = 0.5,
) -> pl.DataFrame:
    """`difficulty_frame` (posterior_success, bucket; from estimate_difficulty) plus
    target_group_size (what the problem asks for) and group_size (what it gets this round; 0: no
    group this round). Sum of group_size <= budget."""
    _check_sizes(min_size, max_size, budget, hit_probability)
    targets = [
        min_size
        if bucket in SMALLEST_GROUPS
        else target_group_size(p, min_size=min_size, max_size=max_size, hit_probability=hit_probability)
        for p, bucket in zip(difficulty_frame["posterior_success"], difficulty_frame["bucket"])
    ]
    sizes = share_budget(targets, min_size=min_size, budget=budget)
    return difficulty_frame.with_columns(
        pl.Series("target_group_size", targets, dtype=pl.Int64), pl.Series("group_size", sizes, dtype=pl.Int64)
    )


def turn_limits(
    difficulty_frame: pl.DataFrame,
    *,
    min_turns: int,
    max_turns: int | None,
    env_max_turns: int,
) -> pl.DataFrame:
    """`difficulty_frame` (difficulty, unknown; optional problem_max_turns) plus turn_limit: longer for
    harder problems, the environment's bound for unknown ones, never above that bound."""
    if env_max_turns < 1:
        raise ValueError(f"env_max_turns must be >= 1, got {env_max_turns}")
    if min_turns < 1:
        raise ValueError(f"min_turns must be >= 1, got {min_turns}")
    top = env_max_turns if max_turns is None else max_turns
    if top < min_turns:
        raise ValueError(f"max_turns ({top}) must be >= min_turns ({min_turns})")
    bound = pl.lit(env_max_turns, dtype=pl.Int64)
    if "problem_max_turns" in difficulty_frame.columns:
        bound = pl.min_horizontal(bound, pl.col("problem_max_turns").fill_null(env_max_turns))
    by_difficulty = (min_turns + ((top - min_turns) * pl.col("difficulty") + 0.5 + _EPS).floor()).cast(pl.Int64)
    limit = pl.when(pl.col("unknown")).then(bound).otherwise(pl.min_horizontal(by_difficulty, bound))
    return difficulty_frame.with_columns(limit.cast(pl.Int64).alias("turn_limit"))


def bucket_summary(budget_frame: pl.DataFrame) -> dict[str, float]:
    """Per difficulty bucket, the number of problems and the rollouts given to them this round, as
    MLflow metrics: curation/problems_<bucket>, curation/rollouts_<bucket> (every bucket, 0 if empty)."""
    metrics: dict[str, float] = {}
    buckets = np.asarray(budget_frame["bucket"].cast(pl.String).to_list(), dtype=object)
    sizes = budget_frame["group_size"].to_numpy() if "group_size" in budget_frame.columns else None
    for bucket in BUCKETS:
        in_bucket = buckets == bucket
        metrics[f"curation/problems_{bucket}"] = float(in_bucket.sum())
        if sizes is not None:
            metrics[f"curation/rollouts_{bucket}"] = float(sizes[in_bucket].sum())
    return metrics
