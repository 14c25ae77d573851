"""Lineage rows: which trajectories trained which trainer version (pure builders and checks)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from dartflow.storage.schema import LINEAGE_SCHEMA

# BTree indices of the lineage table: the staleness window, a version's batch, an id's versions.
LINEAGE_INDEXED_COLUMNS = ("min_policy_version", "trainer_version", "trajectory_id")


def lineage_rows(
    run_id: str | None,
    trainer_version: int,
    batch: pa.Table,
    trajectories_version: int,
    consumed_at: datetime | None = None,
) -> pa.Table:
    """One lineage row per trajectory of `batch` (needs trajectory_id and min_policy_version),
    keeping the batch order in `position`."""
    n = batch.num_rows
    consumed_at = consumed_at or datetime.now(UTC)
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "trainer_version": pa.array([trainer_version] * n, pa.int64()),
        "position": pa.array(range(n), pa.int32()),
        "trajectory_id": batch["trajectory_id"].cast(pa.string()),
        "min_policy_version": batch["min_policy_version"].cast(pa.int64()),
        "trajectories_version": pa.array([trajectories_version] * n, pa.int64()),
        "consumed_at": pa.array([consumed_at] * n, pa.timestamp("us", tz="UTC")),
    }
    return pa.Table.from_pydict(columns, schema=LINEAGE_SCHEMA)


def same_batch(recorded: pa.Table, trajectory_ids: list[str]) -> bool:
    """Whether lineage rows already recorded for a version hold exactly these ids in this order."""
    return recorded.sort_by("position")["trajectory_id"].to_pylist() == list(trajectory_ids)
