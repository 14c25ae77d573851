"""Real processes against one store: concurrent creation, writers + reader, compaction, SIGKILL."""

import multiprocessing
import os
import signal
import time
from collections import Counter

import pytest

from dartflow.storage import TrajectoryStore

import store_helpers
from store_helpers import read_lines

pytestmark = pytest.mark.slow
SPAWN = multiprocessing.get_context("spawn")


def acknowledged(paths) -> list[str]:
    return [i for path in paths for line in read_lines(path) for i in line.split()]


def stored_id_counts(uri: str) -> Counter:
    store = TrajectoryStore(uri, compact_every_appends=0)
    return Counter(
        store._scan(store._trajectories, None, ["trajectory_id"])["trajectory_id"].to_pylist()
    )


def run_all(processes, timeout=120):
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def test_many_processes_open_a_fresh_store_at_once(tmp_path):
    uri, barrier = str(tmp_path / "fresh"), SPAWN.Barrier(4)
    paths = [str(tmp_path / f"acked-{k}") for k in range(4)]
    run_all(
        [
            SPAWN.Process(target=store_helpers.open_and_append_process, args=(uri, k, barrier, paths[k]))
            for k in range(4)
        ]
    )
    counts = stored_id_counts(uri)
    assert sorted(counts) == sorted(acknowledged(paths)) and len(counts) == 12
    assert set(counts.values()) == {1}


def test_writers_and_a_reader_lose_and_duplicate_nothing(tmp_path):
    uri = str(tmp_path / "busy")
    TrajectoryStore(uri)  # created up front so the reader can start at once
    paths = [str(tmp_path / f"acked-{k}") for k in range(3)]
    # compact_every=10: writers also compact, racing each other and the appends.
    writers = [
        SPAWN.Process(target=store_helpers.writer_process, args=(uri, k, 30, 4, paths[k], 10))
        for k in range(3)
    ]
    for writer in writers:
        writer.start()
    reader = TrajectoryStore(uri, run_id="run-a", compact_every_appends=5)
    trainer_version, consumed = 0, []
    while any(w.is_alive() for w in writers) or reader.next_batch(trainer_version, 100, 8).num_rows:
        batch = reader.next_batch(trainer_version, max_staleness=100, batch_size=8)
        if batch.num_rows:
            reader.record_consumption(trainer_version, batch)
            consumed += batch["trajectory_id"].to_pylist()
            trainer_version += 1
        else:
            time.sleep(0.05)
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0

    acked = acknowledged(paths)
    counts = stored_id_counts(uri)
    assert len(acked) == 3 * 30 * 4 and sorted(counts) == sorted(acked)
    assert set(counts.values()) == {1}, "an acknowledged id is stored twice"
    assert len(consumed) == len(set(consumed)), "a trajectory was handed out twice"
    assert sorted(consumed) == sorted(acked), "the reader missed rows"
    assert trainer_version > 1
    assert [reader.trained_versions(i) for i in consumed[:3]] == [[0], [0], [0]]


def test_compaction_while_writers_append_loses_no_row(tmp_path):
    uri = str(tmp_path / "compacting")
    store = TrajectoryStore(uri, compact_every_appends=0)
    store.append(store_helpers.small_table([0, 0], prefix="seed-"))
    store.compact()  # builds the indices now, so the compactions below are quick
    early_version = store.version
    paths = [str(tmp_path / f"acked-{k}") for k in range(2)]
    writers = [
        SPAWN.Process(target=store_helpers.writer_process, args=(uri, k, 40, 3, paths[k], 0, 0.02))
        for k in range(2)
    ]
    for writer in writers:
        writer.start()
    overlapping = 0  # compactions during which some writer committed an append
    while any(w.is_alive() for w in writers):
        before = len(acknowledged(paths))
        store.compact()
        overlapping += len(acknowledged(paths)) > before
        time.sleep(0.02)
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    store.compact()
    counts = stored_id_counts(uri)
    assert overlapping >= 1
    assert (
        sorted(counts) == sorted(acknowledged(paths) + ["seed-0", "seed-1"])
        and len(counts) == 2 + 2 * 40 * 3
    )
    assert set(counts.values()) == {1}
    assert store.as_of(early_version).num_rows == 2  # old versions still readable


def test_sigkilled_writer_loses_nothing_it_acknowledged(tmp_path):
    uri, acked_path = str(tmp_path / "killed"), str(tmp_path / "acked")
    for kill in range(2):
        writer = SPAWN.Process(target=store_helpers.endless_writer_process, args=(uri, acked_path))
        writer.start()
        target = len(read_lines(acked_path)) + 6 + 3 * kill
        deadline = time.time() + 60
        while len(read_lines(acked_path)) < target and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.013 * (kill + 1))  # land somewhere inside the next append
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        assert writer.exitcode == -signal.SIGKILL

        acked = acknowledged([acked_path])
        counts = stored_id_counts(uri)
        assert acked and set(acked) <= set(counts), "an acknowledged row is missing"
        assert set(counts.values()) == {1}

    store = TrajectoryStore(uri, run_id="run-a")
    store.append(store_helpers.small_table([10**6], prefix="after-kill-"))
    assert store.next_batch(10**6, 0, 5)["trajectory_id"].to_pylist() == ["after-kill-0"]
    assert store.count() >= len(acknowledged([acked_path])) + 1
