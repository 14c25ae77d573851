"""Buffering in front of TrajectoryStore.append for writers that finish a few trajectories at a time.

A LanceDB append is one commit whose fixed cost (~5 ms here) dominates small batches: appending 16
rows at a time reaches ~0.7 of raw Parquet throughput, 64 rows ~0.9 (benchmarks/reports/store.md).
Rows are validated when added (the error points at the caller's batch) and written together.
Nothing is durable until a flush returns its ids.
"""

from __future__ import annotations

import time

import pyarrow as pa

from dartflow.storage.records import TrajectoryBatch
from dartflow.storage.trajectory_store import TrajectoryStore


class BatchedAppender:
    """Collects trajectories; appends them once `min_rows` are buffered or the oldest buffered row
    waited `max_seconds` (checked when adding). Use as a context manager to flush on exit."""

    def __init__(self, store: TrajectoryStore, min_rows: int = 64, max_seconds: float | None = 5.0):
        if min_rows < 1:
            raise ValueError(f"min_rows must be >= 1, got {min_rows}")
        self.store, self.min_rows, self.max_seconds = store, min_rows, max_seconds
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._oldest: float | None = None

    @property
    def buffered_rows(self) -> int:
        return self._buffered_rows

    def add(self, data: TrajectoryBatch) -> list[str]:
        """Buffer a batch; returns the ids made durable by this call (empty unless it flushed)."""
        table = self.store.validate(data)
        if table.num_rows:
            self._buffer.append(table)
            self._buffered_rows += table.num_rows
            self._oldest = self._oldest or time.monotonic()
        waited = (
            self._oldest is not None
            and self.max_seconds is not None
            and (time.monotonic() - self._oldest >= self.max_seconds)
        )
        return self.flush() if self._buffered_rows >= self.min_rows or waited else []

    def flush(self) -> list[str]:
        """Append everything buffered; returns the ids, durable once this returns."""
        if not self._buffer:
            return []
        table = pa.concat_tables(self._buffer)
        ids = self.store._append_validated(table)  # validated in add()
        self._buffer, self._buffered_rows, self._oldest = [], 0, None
        return ids

    def __enter__(self) -> BatchedAppender:
        return self

    def __exit__(self, *exc_info) -> None:
        self.flush()
