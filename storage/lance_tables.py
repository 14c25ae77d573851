"""The LanceDB calls the stores need, with the safety the library leaves to callers.

- Tables are created with stable row ids: a row id read in one query stays valid after a concurrent
  compaction (without them `take_row_ids` silently returns nothing for compacted rows), and in
  the Lance file format FILE_FORMAT.
- Connections use read_consistency_interval=0: a reader sees other processes' commits at once.
- Creation is race-safe: several processes may open a fresh store at the same moment.
- A commit that lost a race against other writers is retried (a failed Lance commit wrote no
  manifest, so retrying cannot duplicate rows).
- Compaction keeps every old version unless told otherwise: time travel keeps working.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta

import lancedb
import pyarrow as pa
from lancedb.index import BTree

from dartflow.storage.schema import SCHEMA_VERSION, SCHEMA_VERSION_KEY

log = logging.getLogger(__name__)

# optimize() prunes versions older than 7 days unless told otherwise; this keeps them (~100 years).
KEEP_ALL_VERSIONS = timedelta(days=36500)
_RETRYABLE = ("conflict", "contention", "retry", "concurrent")
_COMMIT_ATTEMPTS = 12


class StoreSchemaError(RuntimeError):
    """An existing table was written under another schema version or with other columns."""


# Lance file format of new tables. Measured here (benchmarks/reports/store.md, 64 realistic rows per
# append): "2.0" appends ~2.3x faster and compacts ~2x faster than "2.1" (LanceDB's "stable"), whose
# encodings compress token ids to ~0.57 of the bytes. Appends and compactions are the hot path;
# pass storage_options={"new_table_data_storage_version": "2.1"} to trade them for disk.
FILE_FORMAT = "2.0"


def connect(uri: str, storage_options: dict[str, str] | None = None) -> lancedb.DBConnection:
    options = {
        "new_table_enable_stable_row_ids": "true",
        "new_table_data_storage_version": FILE_FORMAT,
        **(storage_options or {}),
    }
    return lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=options)


def open_or_create(db: lancedb.DBConnection, name: str, schema: pa.Schema) -> lancedb.table.Table:
    """Open table `name`, creating it empty with `schema` if absent; checks the schema either way."""
    for _ in range(_COMMIT_ATTEMPTS):
        try:
            table = db.open_table(name)
        except ValueError as error:
            if "not found" not in str(error).lower():
                raise
            try:
                table = db.create_table(name, schema=schema)
            except (ValueError, OSError, RuntimeError) as create_error:
                # Another process created it between our open and create: open theirs.
                if "exist" in str(create_error).lower() or is_retryable(create_error):
                    time.sleep(random.uniform(0.005, 0.05))
                    continue
                raise
        check_schema(name, table.schema, schema)
        return table
    raise RuntimeError(f"could not open or create table {name!r}")


def check_schema(name: str, stored: pa.Schema, expected: pa.Schema) -> None:
    version = (stored.metadata or {}).get(SCHEMA_VERSION_KEY, b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise StoreSchemaError(
            f"table {name!r} was written with schema version {version}, this code reads version "
            f"{SCHEMA_VERSION}: migrate the table or use a new store directory"
        )
    got = [(f.name, f.type) for f in stored]
    want = [(f.name, f.type) for f in expected]
    if got != want:
        raise StoreSchemaError(f"table {name!r} has columns {got}, expected {want}")


def is_retryable(error: BaseException) -> bool:
    message = str(error).lower()
    return any(word in message for word in _RETRYABLE)


def _commit_with_retry(commit: Callable[[], int]) -> int:
    """Run `commit` (one LanceDB commit, returning its table version), retrying commit conflicts."""
    for attempt in range(_COMMIT_ATTEMPTS):
        try:
            return commit()
        except Exception as error:  # lancedb raises plain RuntimeError/OSError for commit conflicts
            if not is_retryable(error) or attempt == _COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0, 0.01 * 2**attempt))
    raise AssertionError("unreachable")


def add_with_retry(table: lancedb.table.Table, data: pa.Table) -> int:
    """Append `data`; returns the committed table version. Once this returns, the rows are durable."""
    return _commit_with_retry(lambda: table.add(data).version)


def insert_and_delete(
    table: lancedb.table.Table, data: pa.Table, on: list[str], delete_where: str | None
) -> int:
    """In one commit: insert the rows of `data` whose `on` key is not in the table yet, and delete
    the rows matching `delete_where` (None: none). Returns the committed table version. Readers
    never see the inserts without the deletes (a capped table stays capped)."""

    def commit() -> int:
        builder = table.merge_insert(on).when_not_matched_insert_all()
        if delete_where:
            builder = builder.when_not_matched_by_source_delete(delete_where)
        return builder.execute(data).version

    return _commit_with_retry(commit)


def ensure_btree_indices(table: lancedb.table.Table, columns: tuple[str, ...]) -> None:
    """Create the missing BTree indices (on a non-empty table; Lance cannot train on no rows)."""
    existing = {tuple(index.columns) for index in table.list_indices()}
    missing = [c for c in columns if (c,) not in existing]
    if not missing or table.count_rows() == 0:
        return
    for column in missing:
        try:
            table.create_index(column, config=BTree(), replace=False)
        except Exception as error:  # another process created it first: fine
            if "exist" not in str(error).lower() and not is_retryable(error):
                raise


def compact(table: lancedb.table.Table, prune_older_than: timedelta | None = None) -> None:
    """Merge small fragments and fold new rows into the indices. Old versions stay readable unless
    `prune_older_than` is given (then versions older than that are deleted, as Lance allows)."""
    table.optimize(cleanup_older_than=prune_older_than or KEEP_ALL_VERSIONS)
