"""Helpers shared by the storage tests and by the worker processes they spawn."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from dartflow.storage import TrajectoryRecord, TrajectoryStore, TurnRecord, records_to_table
from dartflow.storage.synthetic import synthetic_records

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def small_record(
    trajectory_id: str,
    version: int,
    *,
    problem_id: str = "p0",
    reward: float = 0.0,
    success: bool = False,
    seconds: float = 0.0,
    run_id: str = "run-a",
    environment: str = "env",
    split: str = "train",
    source: str = "rollout",
    turns: int = 1,
) -> TrajectoryRecord:
    """A tiny trajectory with hand-checkable values; created_at = T0 + `seconds`."""
    return TrajectoryRecord(
        problem_id=problem_id,
        group_id=f"g-{problem_id}",
        environment=environment,
        turns=[
            TurnRecord(
                observation=f"obs {t}",
                action=f"act {t}",
                prompt_token_ids=[1, 2, 3],
                response_token_ids=[4, 5],
                behavior_logprobs=[-0.5, -0.25],
                min_policy_version=version,
                reward=reward / turns,
            )
            for t in range(turns)
        ],
        finish_reason="done",
        success=success,
        run_id=run_id,
        trajectory_id=trajectory_id,
        split=split,
        source=source,
        created_at=T0 + timedelta(seconds=seconds),
    )


def small_table(versions: list[int], prefix: str = "t", **kwargs) -> pa.Table:
    """One small trajectory per version, ids `{prefix}{i}`, created one second apart."""
    return records_to_table(
        [small_record(f"{prefix}{i}", v, seconds=i, **kwargs) for i, v in enumerate(versions)]
    )


def realistic_table(count: int, seed: int = 0, **kwargs) -> pa.Table:
    return records_to_table(synthetic_records(count, rng=np.random.default_rng(seed), **kwargs))


def write_line_durably(path: str, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip()]


# ---- worker processes (multiprocessing spawn imports this module by name) ------------------------


def writer_process(
    uri: str,
    writer: int,
    appends: int,
    rows: int,
    acked_path: str,
    compact_every: int,
    pause: float = 0.0,
) -> None:
    """Append `appends` batches of `rows`; after each acknowledged append, log its ids durably."""
    import time

    store = TrajectoryStore(uri, run_id="run-a", compact_every_appends=compact_every)
    for batch in range(appends):
        time.sleep(pause)
        versions = [batch // 4] * rows
        table = small_table(versions, prefix=f"w{writer}-b{batch}-")
        ids = store.append(table)
        write_line_durably(acked_path, " ".join(ids))


def endless_writer_process(uri: str, acked_path: str) -> None:
    """Append forever (until killed), logging each acknowledged batch's ids durably."""
    store = TrajectoryStore(uri, run_id="run-a", compact_every_appends=8)
    batch = 0
    while True:
        ids = store.append(realistic_table(8, seed=batch, run_id="run-a", policy_version=batch))
        write_line_durably(acked_path, " ".join(ids))
        batch += 1


def open_and_append_process(uri: str, writer: int, barrier, acked_path: str) -> None:
    """Open a fresh store at the same moment as the other processes, then append one batch."""
    barrier.wait(timeout=120)  # every process has imported everything: open together
    store = TrajectoryStore(uri, run_id="run-a")
    ids = store.append(small_table([0, 0, 0], prefix=f"open{writer}-"))
    write_line_durably(acked_path, " ".join(ids))
