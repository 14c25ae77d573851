"""Pure parts of reading: staleness, consumption, oldest-first order, curation hooks, statistics."""

from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest

from dartflow.storage import problem_stats, records_to_table
from dartflow.storage.selection import (
    admissible_candidates,
    choose_batch,
    order_like,
    sql_in,
    sql_string,
    staleness,
    staleness_filter,
)

from store_helpers import small_record

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def candidates(versions, seconds=None):
    seconds = seconds or list(range(len(versions)))
    return pa.table(
        {
            "trajectory_id": [f"t{i}" for i in range(len(versions))],
            "min_policy_version": pa.array(versions, pa.int64()),
            "created_at": pa.array(
                [T0 + timedelta(seconds=s) for s in seconds], pa.timestamp("us", tz="UTC")
            ),
        }
    )


def test_staleness_is_trainer_version_minus_oldest_token_version():
    assert staleness(10, pa.array([10, 7, 3], pa.int64())).to_pylist() == [0, 3, 7]
    assert staleness_filter(10, 3) == "min_policy_version >= 7"
    with pytest.raises(ValueError, match="max_staleness"):
        staleness_filter(10, -1)


def test_admissible_keeps_fresh_unconsumed_rows_oldest_first():
    table = candidates([6, 2, 4, 3, 5, 4], seconds=[0, 1, 9, 3, 4, 2])
    chosen = admissible_candidates(table, pa.array(["t4"]), trainer_version=6, max_staleness=2)
    # staleness: t0 0, t1 4 (too stale), t2 2, t3 3 (too stale), t4 consumed, t5 2
    # oldest first: version 4 (t5 created before t2), then version 6
    assert chosen["trajectory_id"].to_pylist() == ["t5", "t2", "t0"]


def test_choose_batch_takes_the_oldest_without_a_selector():
    table = candidates([1, 2, 3])
    assert choose_batch(table, 2) == ["t0", "t1"]
    assert choose_batch(table, 10) == ["t0", "t1", "t2"]
    with pytest.raises(ValueError, match="batch_size"):
        choose_batch(table, 0)


def test_selector_may_return_ids_or_rows_and_is_capped_at_batch_size():
    table = candidates([1, 2, 3, 4])
    assert choose_batch(table, 2, select=lambda c: ["t3", "t1", "t0"]) == ["t3", "t1"]
    newest_first = choose_batch(
        table, 4, select=lambda c: c.sort_by([("min_policy_version", "descending")])
    )
    assert newest_first == ["t3", "t2", "t1", "t0"]


def test_selector_cannot_pick_rows_outside_the_candidates():
    with pytest.raises(ValueError, match="'t9', which is not an admissible candidate"):
        choose_batch(candidates([1, 2]), 2, select=lambda c: ["t0", "t9"])
    with pytest.raises(ValueError, match="twice"):
        choose_batch(candidates([1, 2]), 2, select=lambda c: ["t0", "t0"])


def test_order_like_reorders_and_reports_missing_ids():
    table = candidates([1, 2, 3])
    assert order_like(table, ["t2", "t0"])["trajectory_id"].to_pylist() == ["t2", "t0"]
    with pytest.raises(KeyError, match="t7"):
        order_like(table, ["t0", "t7"])


def test_sql_literals_are_quoted():
    assert sql_string("it's") == "'it''s'"
    assert sql_in("trajectory_id", ["a", "b'c"]) == "trajectory_id IN ('a', 'b''c')"


def test_problem_stats_match_a_hand_computation():
    rows = [
        small_record("a1", 3, problem_id="easy", reward=1.0, success=True, seconds=0),
        small_record("a2", 5, problem_id="easy", reward=1.0, success=True, seconds=1),
        small_record("a3", 4, problem_id="easy", reward=0.0, success=False, seconds=2),
        small_record("b1", 2, problem_id="hard", reward=0.0, success=False, seconds=3),
        small_record("b2", 6, problem_id="hard", reward=0.5, success=False, seconds=4),
        small_record(
            "c1", 1, problem_id="easy", reward=1.0, success=True, environment="other", seconds=5
        ),
    ]
    stats = problem_stats(records_to_table(rows))
    expected = pl.DataFrame(
        {
            "environment": ["env", "env", "other"],
            "problem_id": ["easy", "hard", "easy"],
            "attempts": [3, 2, 1],
            "successes": [2, 0, 1],
            "success_rate": [2 / 3, 0.0, 1.0],
            "mean_reward": [2 / 3, 0.25, 1.0],
            "last_policy_version": [5, 6, 1],
        }
    )
    assert stats.drop("last_seen_at").equals(expected)
    assert stats["last_seen_at"].to_list()[1] == T0 + timedelta(seconds=4)


def test_problem_stats_of_nothing_is_an_empty_frame_with_the_columns():
    empty = records_to_table([small_record("x", 0)]).slice(0, 0)
    stats = problem_stats(empty)
    assert stats.height == 0 and "success_rate" in stats.columns
