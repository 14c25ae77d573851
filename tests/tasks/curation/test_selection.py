import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from dartflow.tasks.curation.selection import (
    duration_membership_correlation,
    duration_weights,
    high_entropy_turns,
    informative_groups,
)


def batch() -> pa.Table:
    schema = pa.schema(
        [("trajectory_id", pa.string()), ("group_id", pa.string()), ("reward", pa.float64())],
        metadata={b"dartflow.schema": b"trajectories"},
    )
    return pa.table(
        {
            "trajectory_id": ["a1", "b1", "a2", "b2", "c1", "d1", "d2"],
            "group_id": ["a", "b", "a", "b", "c", "d", "d"],
            "reward": [1.0, 1.0, 0.0, 1.0, 0.5, 0.2, 0.2001],
        },
        schema=schema,
    )


def test_equal_reward_groups_are_dropped_and_counted():
    kept, dropped = informative_groups(batch())
    # a differs; b is all 1.0; c is a group of one; d differs by 1e-4
    assert kept["trajectory_id"].to_pylist() == ["a1", "a2", "d1", "d2"]
    assert dropped == 2
    assert kept.schema == batch().schema  # same columns, types and metadata as the store's rows


def test_reward_tolerance_treats_near_equal_rewards_as_equal():
    kept, dropped = informative_groups(batch(), reward_tolerance=1e-3)
    assert kept["trajectory_id"].to_pylist() == ["a1", "a2"]
    assert dropped == 3
    with pytest.raises(ValueError, match="reward_tolerance"):
        informative_groups(batch(), reward_tolerance=-1.0)


def test_polars_rows_come_back_as_polars():
    kept, dropped = informative_groups(pl.from_arrow(batch()))
    assert isinstance(kept, pl.DataFrame)
    assert kept["trajectory_id"].to_list() == ["a1", "a2", "d1", "d2"] and dropped == 2


def test_all_informative_or_empty_batches():
    kept, dropped = informative_groups(batch().slice(0, 0))
    assert kept.num_rows == 0 and dropped == 0
    only_a = batch().filter(pa.array([g == "a" for g in batch()["group_id"].to_pylist()]))
    kept, dropped = informative_groups(only_a)
    assert kept.num_rows == 2 and dropped == 0


def test_keeps_the_top_fraction_of_turns_by_entropy():
    mask, kept = high_entropy_turns([0.1, 0.9, 0.5, 0.8, 0.3], keep_fraction=0.4)
    assert mask.tolist() == [False, True, False, True, False]
    assert kept == pytest.approx(0.4)


def test_keep_count_rounds_up_without_float_noise():
    assert high_entropy_turns(np.arange(25, dtype=float), 0.28)[0].sum() == 7  # 0.28 x 25 = 7.000000000000001
    mask, kept = high_entropy_turns(np.arange(10, dtype=float), 0.25)  # 2.5 -> 3
    assert mask.tolist() == [False] * 7 + [True] * 3 and kept == pytest.approx(0.3)


def test_ties_go_to_earlier_turns_nan_ranks_last_and_one_turn_is_always_kept():
    assert high_entropy_turns([0.5, 0.5, 0.5], 0.5)[0].tolist() == [True, True, False]
    many_ties = high_entropy_turns([0.1] + [0.5] * 40, 0.25)[0]  # long enough for an unstable sort to differ
    assert many_ties.tolist() == [False] + [True] * 11 + [False] * 29
    assert high_entropy_turns([math.nan, 0.2, 0.1], 0.5)[0].tolist() == [False, True, True]
    mask, kept = high_entropy_turns([0.1, 0.2, 0.3], 0.01)
    assert mask.tolist() == [False, False, True] and kept == pytest.approx(1 / 3)
    mask, kept = high_entropy_turns([0.3, 0.1], 1.0)
    assert mask.all() and kept == 1.0


def test_entropy_selection_edge_inputs():
    mask, kept = high_entropy_turns([], 0.5)
    assert mask.size == 0 and math.isnan(kept)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep_fraction"):
            high_entropy_turns([0.1], bad)
    with pytest.raises(ValueError, match="1-D"):
        high_entropy_turns([[0.1, 0.2]], 0.5)


def test_duration_weights_are_relative_to_the_group_mean():
    weights = duration_weights(["a", "b", "a", "b", "b", "z", "z"], [1.0, 2.0, 3.0, 2.0, 5.0, 0.0, 0.0])
    # a: mean 2 -> 1/2, 3/2; b: mean 3 -> 2/3, 2/3, 5/3; z: all zero -> 1, 1
    assert weights.tolist() == pytest.approx([0.5, 2 / 3, 1.5, 2 / 3, 5 / 3, 1.0, 1.0])
    groups = np.array(["a", "b", "a", "b", "b", "z", "z"])
    for group in ("a", "b", "z"):
        assert weights[groups == group].mean() == pytest.approx(1.0)


def test_duration_weights_reject_bad_input():
    with pytest.raises(ValueError, match="durations"):
        duration_weights(["a"], [-1.0])
    with pytest.raises(ValueError, match="durations"):
        duration_weights(["a"], [math.nan])
    with pytest.raises(ValueError, match="shapes"):
        duration_weights(["a", "b"], [1.0])
    assert duration_weights([], []).size == 0


def test_correlation_is_point_biserial():
    durations, in_batch = [1.0, 2.0, 3.0, 4.0], [True, True, False, False]
    # centred durations (-1.5, -0.5, 0.5, 1.5), centred flags (0.5, 0.5, -0.5, -0.5): -2 / sqrt(5 x 1)
    assert duration_membership_correlation(durations, in_batch) == pytest.approx(-2 / math.sqrt(5))
    assert duration_membership_correlation(durations, in_batch) == pytest.approx(
        np.corrcoef(durations, np.array(in_batch, float))[0, 1]
    )


def test_correlation_is_nan_safe():
    assert math.isnan(duration_membership_correlation([0.1, 0.1, 0.1], [True, False, True]))  # constant duration
    assert math.isnan(duration_membership_correlation([1.0, 2.0, 3.0], [True, True, True]))  # all in batch
    assert math.isnan(duration_membership_correlation([1.0], [True]))
    assert math.isnan(duration_membership_correlation([], []))
    # a NaN duration is left out: the rest is perfectly anti-correlated
    assert duration_membership_correlation([1.0, math.nan, 3.0], [True, False, False]) == pytest.approx(-1.0)
