"""TrajectoryStore behaviour in one process: batches, consumption, lineage, stats, time travel."""

from datetime import timedelta

import lancedb
import pyarrow as pa
import pytest

from dartflow.storage import TrajectoryStore, TrajectoryValidationError
from dartflow.storage.lance_tables import StoreSchemaError
from dartflow.storage.schema import LIGHT_COLUMNS

from store_helpers import realistic_table, small_record, small_table


@pytest.fixture
def store(tmp_path):
    return TrajectoryStore(str(tmp_path / "store"), run_id="run-a", compact_every_appends=0)


def ids_of(table: pa.Table) -> list[str]:
    return table["trajectory_id"].to_pylist()


def test_append_acknowledges_ids_and_rejects_bad_batches(store):
    ids = store.append(small_table([0, 1, 2]))
    assert ids == ["t0", "t1", "t2"] and store.count() == 3
    bad = small_table([0], prefix="bad").drop_columns(["reward"])
    with pytest.raises(TrajectoryValidationError, match="reward"):
        store.append(bad)
    assert store.count() == 3
    assert store.append([]) == []


def test_append_of_records_fills_the_store_run_id(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"), run_id="run-z", compact_every_appends=0)
    record = small_record("r0", 0)
    record.run_id = None
    store.append([record])
    assert store.next_batch(0, 0, 5, columns=["run_id"])["run_id"].to_pylist() == ["run-z"]


def test_queries_return_every_row_not_a_default_limit_of_ten(store):
    store.append(small_table([0] * 25))
    assert store.next_batch(0, 0, 100).num_rows == 25
    assert store.as_of(store.version).num_rows == 25
    assert store.problem_stats()["attempts"].to_list() == [25]


def test_next_batch_respects_staleness_and_returns_oldest_first(store):
    store.append(small_table([0, 5, 3, 4, 1, 2, 5]))
    batch = store.next_batch(trainer_version=5, max_staleness=2, batch_size=10)
    assert ids_of(batch) == ["t2", "t3", "t1", "t6"]
    assert batch["min_policy_version"].to_pylist() == [3, 4, 5, 5]
    assert batch.schema.names == list(store.next_batch(5, 2, 1).schema.names)
    assert ids_of(store.next_batch(5, 2, 2)) == ["t2", "t3"]


def test_full_rows_come_back_byte_identical(store):
    table = realistic_table(20, policy_version=3, run_id="run-a")
    store.append(table)
    batch = store.next_batch(3, 0, 20)
    expected = table.take(pa.array([ids_of(table).index(i) for i in ids_of(batch)]))
    assert batch.equals(expected.cast(batch.schema))


def test_consumed_rows_are_never_offered_again(store, tmp_path):
    store.append(small_table([1] * 6))
    first = store.next_batch(1, 0, 4)
    store.record_consumption(1, first)
    second = store.next_batch(1, 0, 4)
    assert set(ids_of(second)) == {"t4", "t5"}
    store.record_consumption(2, ids_of(second))
    assert store.next_batch(2, 1, 10).num_rows == 0
    reopened = TrajectoryStore(store.uri, run_id="run-a", compact_every_appends=0)
    assert reopened.next_batch(2, 5, 10).num_rows == 0


def test_lineage_and_replay_round_trip(store):
    store.append(realistic_table(12, policy_version=7, run_id="run-a"))
    batch = store.next_batch(8, 2, 5)
    store.record_consumption(8, ids_of(batch))
    lineage = store.lineage(8)
    assert ids_of(lineage) == ids_of(batch)
    assert lineage["position"].to_pylist() == [0, 1, 2, 3, 4]
    assert set(lineage["trainer_version"].to_pylist()) == {8}
    assert store.replay(8).equals(batch)
    assert store.replay(8, columns=["behavior_logprobs"]).column_names == [
        "trajectory_id",
        "behavior_logprobs",
    ]
    assert store.trained_versions(ids_of(batch)[0]) == [8]
    assert store.trained_versions("never-trained") == []
    with pytest.raises(KeyError, match="no batch recorded"):
        store.replay(9)


def test_record_consumption_is_idempotent_but_refuses_a_second_batch(store):
    store.append(small_table([0, 0, 0]))
    store.record_consumption(1, ["t0", "t1"])
    store.record_consumption(1, ["t0", "t1"])  # a retried call
    assert store.lineage(1).num_rows == 2
    with pytest.raises(ValueError, match="already has another batch"):
        store.record_consumption(1, ["t2"])
    with pytest.raises(KeyError, match="nope"):
        store.record_consumption(2, ["t2", "nope"])


def test_where_and_select_curate_the_batch(store):
    store.append(small_table([2, 2, 2, 2]))
    store.append(small_table([2, 2], prefix="h", problem_id="hard"))
    hard = store.next_batch(2, 0, 10, where="problem_id = 'hard'")
    assert ids_of(hard) == ["h0", "h1"]
    seen = {}

    def newest_two(candidates: pa.Table) -> list[str]:
        seen["columns"] = candidates.column_names
        return ids_of(candidates)[-2:][::-1]

    chosen = store.next_batch(2, 0, 10, select=newest_two, columns=["problem_id"])
    assert ids_of(chosen) == ["t3", "t2"] and chosen.column_names == ["trajectory_id", "problem_id"]
    assert seen["columns"] == list(LIGHT_COLUMNS)


def test_second_phase_survives_a_compaction_between_the_phases(store):
    for version in range(6):
        store.append(small_table([version] * 4, prefix=f"v{version}-"))

    def compact_then_choose(candidates: pa.Table) -> pa.Table:
        store.compact()  # rewrites every fragment: row addresses change, stable row ids do not
        return candidates

    batch = store.next_batch(5, 5, 24, select=compact_then_choose)
    assert batch.num_rows == 24 and batch["min_policy_version"].to_pylist() == sorted(
        [v for v in range(6)] * 4
    )


def test_run_id_scopes_batches_and_lineage(tmp_path):
    uri = str(tmp_path / "shared")
    run_a = TrajectoryStore(uri, run_id="run-a", compact_every_appends=0)
    run_b = TrajectoryStore(uri, run_id="run-b", compact_every_appends=0)
    run_a.append(small_table([0, 0], prefix="a"))
    run_b.append(small_table([0, 0], prefix="b", run_id="run-b"))
    assert ids_of(run_a.next_batch(0, 0, 10)) == ["a0", "a1"]
    run_b.record_consumption(0, ["b0"])
    assert run_a.lineage(0).num_rows == 0
    everything = TrajectoryStore(uri, compact_every_appends=0)
    assert everything.count() == 4 and ids_of(everything.next_batch(0, 0, 10)) == ["a0", "a1", "b1"]


def test_problem_stats_filters(store):
    store.append(small_table([1, 2], problem_id="p", reward=1.0, success=True))
    store.append(small_table([3], prefix="h", problem_id="p", split="heldout"))
    store.append(small_table([4], prefix="d", problem_id="p", source="demonstration", success=True))
    train = store.problem_stats(split="train")
    assert train.select("attempts", "successes", "last_policy_version").row(0) == (2, 2, 2)
    assert store.problem_stats()["attempts"].to_list() == [3]
    assert store.problem_stats(source=None)["attempts"].to_list() == [4]
    assert store.problem_stats(environment="elsewhere").height == 0
    assert store.problem_stats(run_id="run-a")["attempts"].to_list() == [3]


def test_time_travel_reads_earlier_versions_even_after_compaction(store):
    store.append(small_table([0, 0], prefix="a"))
    after_first = store.version
    store.append(small_table([1, 1], prefix="b"))
    store.compact()
    store.append(small_table([2], prefix="c"))
    assert ids_of(store.as_of(after_first)) == ["a0", "a1"]
    assert store.as_of(after_first, where="trajectory_id = 'a1'", columns=["reward"]).num_rows == 1
    versions = store.versions()
    assert [v.version for v in versions] == sorted(v.version for v in versions)
    assert {after_first, store.version} <= {v.version for v in versions}
    assert next(v for v in versions if v.version == after_first).num_rows == 2
    assert store.count() == 5


def test_maybe_compact_runs_every_n_writes_and_keeps_rows(tmp_path):
    store = TrajectoryStore(str(tmp_path / "s"), run_id="run-a", compact_every_appends=3)
    fragments = []
    for batch in range(7):
        store.append(small_table([batch] * 2, prefix=f"b{batch}-"))
        fragments.append(store._trajectories.stats()["fragment_stats"]["num_fragments"])
    # Compactions after the 3rd and 6th writes; the second one keeps the indexed fragment apart.
    assert fragments[2] == 1 and fragments[5] <= 2 < fragments[4] and fragments[6] == fragments[5] + 1
    assert store.count() == 14
    indexed = {tuple(i.columns) for i in store._trajectories.list_indices()}
    assert {("min_policy_version",), ("trajectory_id",)} <= indexed
    assert store.maybe_compact() is False  # 1 write since the last compaction


def test_opening_a_table_of_another_schema_version_fails_clearly(tmp_path):
    uri = str(tmp_path / "old")
    old = pa.schema(
        [pa.field("trajectory_id", pa.string())], metadata={b"dartflow.schema_version": b"0"}
    )
    lancedb.connect(uri).create_table("trajectories", schema=old)
    with pytest.raises(StoreSchemaError, match="schema version 0"):
        TrajectoryStore(uri)


def test_pruning_compaction_drops_old_versions_but_no_rows(store):
    store.append(small_table([0, 0], prefix="a"))
    old = store.version
    store.append(small_table([1], prefix="b"))
    store.compact(prune_older_than=timedelta(milliseconds=1))
    with pytest.raises(ValueError, match="no longer exists"):
        store.as_of(old)
    assert store.count() == 3 and ids_of(store.as_of(store.version)) == ["a0", "a1", "b0"]
