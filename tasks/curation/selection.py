"""Trainer-side rules: which groups, which turns, and how much each trajectory of a batch counts.

- Dynamic sampling: a group whose rewards are all equal has zero group-relative advantage for every
  member, so it costs a forward/backward pass and teaches nothing; drop it and count it.
- High-entropy steps: the turns where the policy is most uncertain carry most of the learning
  signal ("Beyond the 80/20 Rule", Wang et al. 2025, https://arxiv.org/abs/2506.01939, at token
  level); train only on the top fraction of the batch's turns by mean token entropy.
- Duration weighting: in an asynchronous loop fast episodes reach the trainer first, so slow-but-good
  behaviour is under-represented; weight each trajectory by its duration relative to its group,
  and measure the bias as the correlation between duration and batch membership.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

# Float slack for the ceil of keep_fraction x turns (0.3 x 10 = 3.0000000000000004 must keep 3).
_EPS = 1e-9


def informative_groups(
    rows: pa.Table | pl.DataFrame, *, reward_tolerance: float = 0.0
) -> tuple[pa.Table | pl.DataFrame, int]:
    """(rows of the groups whose rewards differ, number of groups dropped).

    A group is dropped when max(reward) - min(reward) <= reward_tolerance, a group of one row
    included. Kept rows keep their order and the input's type and schema (only group_id and reward
    are read).
    """
    if reward_tolerance < 0:
        raise ValueError(f"reward_tolerance must be >= 0, got {reward_tolerance}")
    frame = (rows if isinstance(rows, pl.DataFrame) else pl.from_arrow(rows.select(["group_id", "reward"]))).select(
        "group_id", "reward"
    )
    spread = (pl.col("reward").max() - pl.col("reward").min()).over("group_id")
    informative = frame.select((spread > reward_tolerance).alias("informative"))["informative"]
    dropped = frame.filter(~informative)["group_id"].n_unique()
    if isinstance(rows, pl.DataFrame):
        return rows.filter(informative), dropped
    return rows.filter(pa.array(informative.to_numpy(), pa.bool_())), dropped


def high_entropy_turns(turn_entropies: Sequence[float] | np.ndarray, keep_fraction: float) -> tuple[np.ndarray, float]:
    """(mask over the batch's turns, fraction kept): the ceil(keep_fraction x turns) turns of highest
    mean token entropy, at least one. Ties go to the earlier turn; NaN entropies rank last.

    Shapes: turn_entropies (num_turns,), flattened over the batch (e.g. pyarrow.compute.list_flatten
    of a per-turn list column; unflatten the mask with the same offsets).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    entropies = np.asarray(turn_entropies, dtype=np.float64)
    if entropies.ndim != 1:
        raise ValueError(f"turn_entropies must be 1-D (flattened over the batch), got shape {entropies.shape}")
    num_turns = entropies.size
    mask = np.zeros(num_turns, dtype=bool)
    if num_turns == 0:
        return mask, math.nan
    keep = max(1, math.ceil(keep_fraction * num_turns - _EPS))
    # Stable sort of -entropy: descending entropy, earlier index first among equals, NaN at the end.
    order = np.argsort(-entropies, kind="stable")
    mask[order[:keep]] = True
    return mask, keep / num_turns


def duration_weights(group_ids: Sequence[str] | np.ndarray, durations: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each trajectory's duration / its group's mean duration, so that a group's weights average 1.

    A group whose durations are all 0 gets weight 1 everywhere. Shapes: (num_trajectories,).
    Durations are e.g. generation_seconds + environment_seconds.
    """
    durations = np.asarray(durations, dtype=np.float64)
    group_ids = np.asarray(group_ids, dtype=object)
    if durations.shape != group_ids.shape or durations.ndim != 1:
        raise ValueError(f"group_ids {group_ids.shape} and durations {durations.shape} must be equal 1-D shapes")
    if not np.all(np.isfinite(durations)) or np.any(durations < 0):
        raise ValueError("durations must be finite and >= 0")
    if durations.size == 0:
        return durations
    _, group_index = np.unique(group_ids, return_inverse=True)
    group_mean = (np.bincount(group_index, weights=durations) / np.bincount(group_index))[group_index]
    return np.divide(durations, group_mean, out=np.ones_like(durations), where=group_mean > 0)


def duration_membership_correlation(
    durations: Sequence[float] | np.ndarray, in_batch: Sequence[bool] | np.ndarray
) -> float:
    """Point-biserial correlation (Pearson with a 0/1 variable) between episode duration and being in
    the batch; negative = fast episodes are over-represented. NaN durations are left out; NaN when
    fewer than 2 pairs remain or either side is constant."""
    durations = np.asarray(durations, dtype=np.float64)
    flags = np.asarray(in_batch, dtype=np.float64)
    if durations.shape != flags.shape or durations.ndim != 1:
        raise ValueError(f"durations {durations.shape} and in_batch {flags.shape} must be equal 1-D shapes")
    present = np.isfinite(durations)
    durations, flags = durations[present], flags[present]
    # Constant input has no correlation; tested on the raw values, since centring a constant
    # (e.g. three 0.1s) leaves rounding noise that would read as a perfect correlation.
    if durations.size < 2 or np.ptp(durations) == 0 or np.ptp(flags) == 0:
        return math.nan
    centred_d, centred_f = durations - durations.mean(), flags - flags.mean()
    spread = math.sqrt(float(centred_d @ centred_d) * float(centred_f @ centred_f))
    return float(centred_d @ centred_f) / spread
