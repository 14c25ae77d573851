"""Step-selection rows: which turns of each trajectory trained a trainer version, with every turn's
mean token entropy (pure builders and checks). Lives in its own table, not as new lineage columns:
stores written before it open unchanged (the table is created empty), and the lineage schema, read
by every resume, stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from dartflow.storage.schema import STEP_SELECTION_SCHEMA

# BTree index of the step-selection table: a version's rows.
STEP_SELECTION_INDEXED_COLUMNS = ("trainer_version",)


def step_selection_rows(
    run_id: str | None,
    trainer_version: int,
    kept_turns: Mapping[str, Sequence[int]],
    turn_entropies: Mapping[str, Sequence[float]],
    num_turns: Mapping[str, int] | None = None,
    recorded_at: datetime | None = None,
) -> pa.Table:
    """One row per trajectory of `kept_turns`, in its order. `turn_entropies` holds every turn's
    mean entropy (one per turn: `num_turns` when given); kept turns must be distinct indices of
    those turns, and are stored ascending."""
    if set(kept_turns) != set(turn_entropies):
        only = sorted(set(kept_turns) ^ set(turn_entropies))
        raise ValueError(f"kept_turns and turn_entropies must name the same trajectories; differ on {only[:5]}")
    ids = list(kept_turns)
    kept_lists, entropy_lists = [], []
    for trajectory_id in ids:
        entropies = [float(e) for e in turn_entropies[trajectory_id]]
        if num_turns is not None and len(entropies) != num_turns[trajectory_id]:
            raise ValueError(
                f"trajectory {trajectory_id!r}: {len(entropies)} turn entropies, but it has "
                f"{num_turns[trajectory_id]} turns"
            )
        kept = sorted(int(t) for t in kept_turns[trajectory_id])
        if len(set(kept)) != len(kept) or any(not 0 <= t < len(entropies) for t in kept):
            raise ValueError(
                f"trajectory {trajectory_id!r}: kept turns {kept} must be distinct turn indices "
                f"in [0, {len(entropies)})"
            )
        kept_lists.append(kept)
        entropy_lists.append(entropies)
    n = len(ids)
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "trainer_version": pa.array([trainer_version] * n, pa.int64()),
        "position": pa.array(range(n), pa.int32()),
        "trajectory_id": pa.array(ids, pa.string()),
        "kept_turns": pa.array(kept_lists, pa.list_(pa.int32())),
        "turn_entropies": pa.array(entropy_lists, pa.list_(pa.float32())),
        "recorded_at": pa.array([recorded_at or datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.Table.from_pydict(columns, schema=STEP_SELECTION_SCHEMA)


def same_selection(recorded: pa.Table, rows: pa.Table) -> bool:
    """Whether the rows already recorded for a version hold exactly this selection (NaN entropies
    compare equal: a turn without tokens has no mean entropy)."""
    recorded = recorded.sort_by("position")
    if recorded["trajectory_id"].to_pylist() != rows["trajectory_id"].to_pylist():
        return False
    if recorded["kept_turns"].to_pylist() != rows["kept_turns"].to_pylist():
        return False
    stored, given = (table["turn_entropies"].combine_chunks() for table in (recorded, rows))
    return np.array_equal(_offsets(stored), _offsets(given)) and np.array_equal(
        stored.flatten().to_numpy(zero_copy_only=False),
        given.flatten().to_numpy(zero_copy_only=False),
        equal_nan=True,
    )


def _offsets(array: pa.ListArray) -> np.ndarray:
    offsets = array.offsets.to_numpy()
    return offsets - offsets[0]
