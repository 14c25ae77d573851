"""The experience pool table and pooled injections, on a real LanceDB store."""

import json

import lancedb
import pyarrow as pa
import pytest

from dartflow.storage import POOL_SCHEMA, TrajectoryStore, pooled_trajectory_id, records_to_table
from dartflow.storage.experience_pool import plan_pool_update

from store_helpers import small_record, small_table


@pytest.fixture
def store(tmp_path):
    return TrajectoryStore(str(tmp_path / "store"), run_id="run-a", compact_every_appends=0)


def ids_of(table: pa.Table) -> list[str]:
    return table["trajectory_id"].to_pylist()


def successes(versions: list[int], prefix: str, problem_id: str = "p0", **kwargs) -> pa.Table:
    return small_table(versions, prefix=prefix, problem_id=problem_id, success=True, reward=1.0, **kwargs)


def test_pool_is_capped_per_problem_across_adds_keeping_the_newest(store):
    assert store.pool_add(successes([0, 1, 2], "a"), capacity_per_problem=2) == 2
    assert ids_of(store.pool_members("p0")) == ["a2", "a1"]  # newest first
    assert store.pool_add(successes([5], "b"), capacity_per_problem=2) == 1
    assert ids_of(store.pool_members("p0")) == ["b0", "a2"]
    # an older success than every member of a full problem does not enter
    assert store.pool_add(successes([1], "c"), capacity_per_problem=2) == 0
    assert store.pool_add(successes([7, 6, 9, 8], "d"), capacity_per_problem=2) == 2
    assert ids_of(store.pool_members("p0")) == ["d2", "d3"]
    for _ in range(3):
        store.pool_add(successes([10, 11, 12], "e", problem_id="p1"), capacity_per_problem=2)
        assert store.pool_count("p0") == 2 and store.pool_count("p1") == 2
    # a smaller capacity cuts a problem down at its next add
    store.pool_add(successes([13], "f"), capacity_per_problem=1)
    assert ids_of(store.pool_members("p0")) == ["f0"] and store.pool_count() == 3


def test_only_successes_enter_and_duplicates_are_ignored(store):
    mixed = pa.concat_tables(
        [successes([1, 1], "s"), small_table([2], prefix="f", success=False)]
    )
    assert store.pool_add(mixed, capacity_per_problem=4) == 2
    assert store.pool_add(mixed, capacity_per_problem=4) == 0
    assert store.pool_add(pa.concat_tables([successes([3], "n"), successes([1], "s")]), 4) == 1
    assert sorted(ids_of(store.pool_members())) == ["n0", "s0", "s1"]
    assert store.pool_add(small_table([4], prefix="x", success=False), 4) == 0
    with pytest.raises(ValueError, match="capacity_per_problem"):
        store.pool_add(mixed, capacity_per_problem=0)


def test_membership_is_queryable_by_problem_environment_and_run(store):
    store.pool_add(successes([1], "a", problem_id="p0"), 4)
    store.pool_add(successes([1], "b", problem_id="p1"), 4)
    store.pool_add(successes([1], "c", problem_id="p0", environment="other"), 4)
    assert ids_of(store.pool_members("p0")) == ["a0", "c0"]  # by (environment, problem)
    assert ids_of(store.pool_members("p0", environment="env")) == ["a0"]
    assert store.pool_count("p1") == 1 and store.pool_count(environment="other") == 1
    members = store.pool_members(columns=["problem_id", "pool_run_id"])
    assert members.column_names == ["problem_id", "pool_run_id"]
    assert set(members["pool_run_id"].to_pylist()) == {"run-a"}
    assert store.pool_members().schema.names == POOL_SCHEMA.names
    # same problem id in another environment is another problem: capacity is not shared
    store.pool_add(successes([2], "d", problem_id="p0", environment="other"), 1)
    assert ids_of(store.pool_members("p0", environment="env")) == ["a0"]
    assert ids_of(store.pool_members("p0", environment="other")) == ["d0"]
    other_run = TrajectoryStore(store.uri, run_id="run-b", compact_every_appends=0)
    assert other_run.pool_count() == 0
    assert other_run.pool_add(successes([1], "a", problem_id="p0"), 4) == 1  # its own pool
    assert TrajectoryStore(store.uri, compact_every_appends=0).pool_count() == 4  # no run id: every pool


def test_the_pool_keeps_full_rows_and_survives_reopening(store):
    added = successes([3], "a", turns=2)
    store.pool_add(added, 4)
    reopened = TrajectoryStore(store.uri, run_id="run-a", compact_every_appends=0)
    member = reopened.pool_members("p0")
    assert member.select(added.column_names).equals(added.cast(member.select(added.column_names).schema))
    reopened.compact()
    assert reopened.pool_count() == 1


def test_injected_copy_trains_replays_and_leaves_the_original_untouched(store):
    store.append(successes([1], "orig", problem_id="hard"))
    store.pool_add(store.next_batch(1, 0, 5), 4)
    store.append(small_table([4, 4], prefix="fail", problem_id="hard"))  # group g-hard, no success
    original_row = store.as_of(store.version, where="trajectory_id = 'orig0'")
    member = store.pool_members("hard")
    copy = store.inject_pooled(member, "g-hard")
    new_id = ids_of(copy)[0]
    assert new_id == pooled_trajectory_id("orig0", "g-hard") and new_id != "orig0"
    row = copy.to_pylist()[0]
    assert [row[k] for k in ("source", "group_id", "run_id", "success")] == ["pool", "g-hard", "run-a", True]
    metadata = json.loads(row["metadata_json"])
    assert metadata["pooled"] is True and metadata["pooled_from"]["trajectory_id"] == "orig0"
    for column in ("response_token_ids", "behavior_logprobs", "min_policy_version", "turn_max_policy_version"):
        assert row[column] == member[column][0].as_py()

    batch = pa.concat_tables([store.next_batch(4, 0, 5, where="source = 'rollout'"), copy])
    store.record_consumption(4, batch)
    assert ids_of(store.lineage(4)) == ["fail0", "fail1", new_id]
    replayed = store.replay(4)
    assert replayed.equals(batch.cast(replayed.schema))
    assert store.trained_versions(new_id) == [4] and store.trained_versions("orig0") == []
    # the original row and its pool membership are untouched
    assert store.as_of(store.version, where="trajectory_id = 'orig0'").equals(original_row)
    assert ids_of(store.pool_members("hard")) == ["orig0"]


def test_injecting_again_returns_the_stored_copy_instead_of_a_second_one(store):
    store.pool_add(successes([1], "orig"), 4)
    member = store.pool_members("p0")
    first = store.inject_pooled(member, "g1")
    again = store.inject_pooled(member, "g1")
    assert ids_of(again) == ids_of(first) and store.count("source = 'pool'") == 1
    assert ids_of(store.inject_pooled(member, "g2")) != ids_of(first)
    assert store.pool_add(first, 4) == 0  # a pooled copy never enters the pool itself
    with pytest.raises(ValueError, match="one row"):
        store.inject_pooled(member.slice(0, 0), "g3")


def test_an_older_store_without_the_new_tables_opens_and_gets_them(tmp_path):
    uri = str(tmp_path / "old")
    TrajectoryStore(uri, run_id="run-a", compact_every_appends=0).append(small_table([0]))
    db = lancedb.connect(uri)
    db.drop_table("experience_pool")
    db.drop_table("step_selection")
    reopened = TrajectoryStore(uri, run_id="run-a", compact_every_appends=0)
    assert reopened.count() == 1 and reopened.pool_count() == 0
    assert reopened.step_selection(0).num_rows == 0


def test_plan_keeps_the_newest_per_problem_and_evicts_the_rest():
    rows = records_to_table(
        [small_record(f"t{v}", v, success=True, seconds=v) for v in (1, 5, 3)]
        + [small_record("q2", 2, problem_id="q", success=True)]
    )
    existing, new = rows.slice(0, 2), rows.slice(2)  # t1, t5 pooled; t3, q2 arrive
    entering, evicted = plan_pool_update(existing, new, capacity=2)
    assert sorted(entering) == ["q2", "t3"] and evicted == ["t1"]
    assert plan_pool_update(existing, new.slice(0, 0), capacity=1) == ([], ["t1"])
