"""The step-selection table: which turns trained a version, with every turn's entropy."""

import math

import numpy as np
import pytest

from dartflow.storage import STEP_SELECTION_SCHEMA, TrajectoryStore
from dartflow.storage.step_selection import same_selection, step_selection_rows

from store_helpers import small_table


@pytest.fixture
def store(tmp_path):
    store = TrajectoryStore(str(tmp_path / "store"), run_id="run-a", compact_every_appends=0)
    store.append(small_table([0, 0], turns=3))  # t0, t1: three turns each
    return store


def test_step_selection_round_trips_and_survives_reopening(store):
    kept = {"t1": [2, 0], "t0": [1]}
    entropies = {"t0": [0.1, 2.5, 0.2], "t1": [1.5, 0.3, 3.0]}
    store.record_step_selection(5, kept, entropies)
    rows = TrajectoryStore(store.uri, run_id="run-a", compact_every_appends=0).step_selection(5)
    assert rows.schema.names == STEP_SELECTION_SCHEMA.names
    assert rows["trajectory_id"].to_pylist() == ["t1", "t0"] and rows["position"].to_pylist() == [0, 1]
    assert rows["kept_turns"].to_pylist() == [[0, 2], [1]]  # ascending
    np.testing.assert_allclose(rows["turn_entropies"].to_pylist()[0], [1.5, 0.3, 3.0], rtol=1e-6)
    assert set(rows["trainer_version"].to_pylist()) == {5} and store.step_selection(6).num_rows == 0
    # what the issue asks to check: every kept turn's entropy is above every left-out turn's
    kept_e = [e[t] for e, k in zip(rows["turn_entropies"].to_pylist(), rows["kept_turns"].to_pylist()) for t in k]
    left_e = [e[t] for e, k in zip(rows["turn_entropies"].to_pylist(), rows["kept_turns"].to_pylist())
              for t in range(len(e)) if t not in k]
    assert min(kept_e) > max(left_e)


def test_recording_again_is_a_no_op_but_another_selection_is_refused(store):
    kept, entropies = {"t0": [0], "t1": []}, {"t0": [math.nan, 0.5, 0.1], "t1": [0.0, 0.0, 0.0]}
    store.record_step_selection(1, kept, entropies)
    store.record_step_selection(1, kept, entropies)  # a retried call (NaN compares equal)
    assert store.step_selection(1).num_rows == 2
    with pytest.raises(ValueError, match="another step selection"):
        store.record_step_selection(1, {"t0": [1], "t1": []}, entropies)
    other_run = TrajectoryStore(store.uri, run_id="run-b", compact_every_appends=0)
    assert other_run.step_selection(1).num_rows == 0  # scoped to the run, like the lineage


def test_bad_selections_are_rejected_before_anything_is_written(store):
    with pytest.raises(ValueError, match="3 turns"):
        store.record_step_selection(2, {"t0": [0]}, {"t0": [0.1, 0.2]})
    with pytest.raises(ValueError, match="distinct turn indices"):
        store.record_step_selection(2, {"t0": [3]}, {"t0": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="same trajectories"):
        store.record_step_selection(2, {"t0": [0]}, {"t1": [0.1, 0.2, 0.3]})
    with pytest.raises(KeyError, match="nope"):
        store.record_step_selection(2, {"nope": [0]}, {"nope": [0.1]})
    assert store.step_selection(2).num_rows == 0


def test_same_selection_compares_ids_turns_and_entropies():
    rows = step_selection_rows("r", 3, {"a": [0]}, {"a": [0.5, 0.25]})
    assert same_selection(rows, step_selection_rows("r", 3, {"a": [0]}, {"a": [0.5, 0.25]}))
    assert not same_selection(rows, step_selection_rows("r", 3, {"a": [0]}, {"a": [0.5, 0.5]}))
    assert not same_selection(rows, step_selection_rows("r", 3, {"a": [1]}, {"a": [0.5, 0.25]}))
    assert not same_selection(rows, step_selection_rows("r", 3, {"b": [0]}, {"b": [0.5, 0.25]}))
