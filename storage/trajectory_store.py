"""The trajectory store: every trajectory ever generated, in LanceDB, with the lineage of training.

Four tables under one LanceDB URI (a local directory by default; any LanceDB URI works):
- `trajectories`: append-only rows of TRAJECTORY_SCHEMA, written by any number of rollout
  processes at once. `append` returns once the rows are committed: acknowledged = durable.
- `lineage`: (run, trainer version -> trajectory ids, position, time), written by the trainer.
  A consumed trajectory is never offered again; any trained version can be replayed exactly.
- `experience_pool`: successful trajectories kept per hard problem (POOL_SCHEMA), capped per
  problem, written by the trainer. A pooled success that joins a group is appended to
  `trajectories` as a copy with source "pool" (`inject_pooled`), so it trains, is recorded in the
  lineage and replays like any other row.
- `step_selection`: which turns of each trajectory trained a version, with every turn's mean
  entropy (STEP_SELECTION_SCHEMA), written by the trainer.
A store written before the last two tables existed opens unchanged: they are created empty.

Reading a training batch is two-phase so it stays fast at 1M rows: a scan of the light columns
restricted by the staleness window (BTree index on min_policy_version), then a fetch of all the
columns of just the chosen rows by their stable row id.

The class is a thin shell: the choices live in pure functions (`selection`, `stats`, `lineage`,
`validation`) and the LanceDB specifics in `lance_tables`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl
import pyarrow as pa

from dartflow.storage import lance_tables
from dartflow.storage.experience_pool import (
    POOL_RANK_COLUMNS,
    newest_first,
    pool_rows,
    pool_update,
    poolable,
    pooled_copy,
    pooled_trajectory_id,
)
from dartflow.storage.lineage import LINEAGE_INDEXED_COLUMNS, lineage_rows, same_batch
from dartflow.storage.records import TrajectoryBatch, records_to_table
from dartflow.storage.schema import (
    LIGHT_COLUMNS,
    LINEAGE_SCHEMA,
    POOL_SCHEMA,
    STEP_SELECTION_SCHEMA,
    TRAJECTORY_COLUMNS,
    TRAJECTORY_SCHEMA,
)
from dartflow.storage.selection import (
    Selector,
    admissible_candidates,
    choose_batch,
    oldest_admissible_version,
    order_like,
    sql_and,
    sql_in,
    sql_string,
    staleness_filter,
)
from dartflow.storage.stats import STATS_COLUMNS, problem_stats
from dartflow.storage.step_selection import STEP_SELECTION_INDEXED_COLUMNS, same_selection, step_selection_rows
from dartflow.storage.validation import validate_trajectories

log = logging.getLogger(__name__)

TRAJECTORIES_TABLE = "trajectories"
LINEAGE_TABLE = "lineage"
POOL_TABLE = "experience_pool"
STEP_SELECTION_TABLE = "step_selection"
# BTree indices of the trajectories table: the staleness window and lookups by id.
TRAJECTORY_INDEXED_COLUMNS = ("min_policy_version", "trajectory_id")
_ROW_ID = "_rowid"


@dataclass(frozen=True)
class TableVersion:
    version: int
    timestamp: datetime  # as LanceDB reports it (naive)
    num_rows: int


class TrajectoryStore:
    """Trajectories and training lineage in LanceDB; safe for many writer processes and one reader.

    `run_id` scopes the store handle to one run: records appended without a run id get it, and
    next_batch / lineage / replay only see that run's trajectories and consumptions. With None the
    handle sees every run. `compact_every_appends` (0 = never) runs `compact()` after that many
    writes from this process; `prune_versions_older_than` (None = keep all, time travel intact)
    is handed to those compactions.
    """

    def __init__(
        self,
        uri: str,
        run_id: str | None = None,
        compact_every_appends: int = 64,
        *,
        prune_versions_older_than: timedelta | None = None,
        storage_options: dict[str, str] | None = None,
    ):
        if compact_every_appends < 0:
            raise ValueError(f"compact_every_appends must be >= 0, got {compact_every_appends}")
        self.uri = str(uri)
        self.run_id = run_id
        self.compact_every_appends = compact_every_appends
        self.prune_versions_older_than = prune_versions_older_than
        self._db = lance_tables.connect(self.uri, storage_options)
        self._trajectories = lance_tables.open_or_create(self._db, TRAJECTORIES_TABLE, TRAJECTORY_SCHEMA)
        self._lineage = lance_tables.open_or_create(self._db, LINEAGE_TABLE, LINEAGE_SCHEMA)
        self._pool = lance_tables.open_or_create(self._db, POOL_TABLE, POOL_SCHEMA)
        self._steps = lance_tables.open_or_create(self._db, STEP_SELECTION_TABLE, STEP_SELECTION_SCHEMA)
        self._writes_since_compaction = 0

    def __repr__(self) -> str:
        return f"TrajectoryStore(uri={self.uri!r}, run_id={self.run_id!r})"

    # ---- writing -----------------------------------------------------------------------------

    def append(self, data: TrajectoryBatch) -> list[str]:
        """Validate and append a batch; returns its trajectory ids once the rows are durable.
        Each call is one LanceDB commit (~5 ms whatever its size): append 64+ rows at a time, or
        through a BatchedAppender (which validates when adding)."""
        return self._append_validated(self.validate(data))

    def validate(self, data: TrajectoryBatch) -> pa.Table:
        """The batch as append would write it (run id filled in), or TrajectoryValidationError."""
        if not isinstance(data, pa.Table | pa.RecordBatch):
            data = records_to_table(data, run_id=self.run_id)
        return validate_trajectories(data)

    def _append_validated(self, table: pa.Table) -> list[str]:
        """Append a table that `validate` returned (or a concatenation of such tables)."""
        if table.num_rows == 0:
            return []
        lance_tables.add_with_retry(self._trajectories, table)
        self._count_write()
        return table["trajectory_id"].to_pylist()

    # ---- reading a training batch --------------------------------------------------------------

    def admissible(
        self, trainer_version: int, max_staleness: int, *, where: str | None = None
    ) -> pa.Table:
        """Light columns of the trajectories that could train `trainer_version` now: staleness <=
        max_staleness, not consumed, matching `where` (SQL over the trajectories' columns);
        oldest first. Carries `_rowid` for the second phase."""
        scan_filter = sql_and(
            staleness_filter(trainer_version, max_staleness), self._run_filter(), where
        )
        candidates = self._scan(self._trajectories, scan_filter, [*LIGHT_COLUMNS], with_row_id=True)
        lineage_filter = sql_and(
            f"min_policy_version >= {oldest_admissible_version(trainer_version, max_staleness)}",
            self._run_filter(),
        )
        consumed = self._scan(self._lineage, lineage_filter, ["trajectory_id"])["trajectory_id"]
        return admissible_candidates(candidates, consumed, trainer_version, max_staleness)

    def next_batch(
        self,
        trainer_version: int,
        max_staleness: int,
        batch_size: int,
        *,
        where: str | None = None,
        select: Selector | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Up to `batch_size` unconsumed trajectories with staleness <= max_staleness.

        `where` is a SQL filter pushed down to the scan; `select` receives the admissible
        candidates' light columns (oldest first) and returns the chosen rows or ids. Rows come back
        in the chosen order (oldest first without `select`) with `columns` (default: all;
        trajectory_id is always included). Nothing is marked consumed until record_consumption.
        """
        candidates = self.admissible(trainer_version, max_staleness, where=where)
        ids = choose_batch(candidates.drop_columns([_ROW_ID]), batch_size, select)
        columns = self._columns(columns)
        if not ids:
            return TRAJECTORY_SCHEMA.empty_table().select(columns)
        row_ids = order_like(candidates, ids)[_ROW_ID].to_pylist()
        rows = self._trajectories.take_row_ids(row_ids).select(columns).to_arrow()
        return order_like(rows.select(columns), ids)

    def record_consumption(self, trainer_version: int, trajectories: Sequence[str] | pa.Table) -> None:
        """Record that these trajectories (ids, or the table next_batch returned) trained
        `trainer_version`. Recording the same batch again is a no-op (safe to retry); a different
        batch for an already recorded version is an error."""
        if isinstance(trajectories, pa.Table) and "min_policy_version" in trajectories.column_names:
            batch = trajectories.select(["trajectory_id", "min_policy_version"])
        else:
            is_table = isinstance(trajectories, pa.Table)
            ids = trajectories["trajectory_id"].to_pylist() if is_table else list(trajectories)
            batch = self._fetch_by_ids(ids, ["trajectory_id", "min_policy_version"])
        ids = batch["trajectory_id"].to_pylist()
        if len(set(ids)) != len(ids):
            raise ValueError(f"trainer version {trainer_version}: the batch holds an id twice")
        recorded = self.lineage(trainer_version)
        if recorded.num_rows:
            if same_batch(recorded, ids):
                return
            raise ValueError(f"trainer version {trainer_version} already has another batch recorded")
        rows = lineage_rows(self.run_id, trainer_version, batch, self._trajectories.version)
        lance_tables.add_with_retry(self._lineage, rows)
        self._count_write()

    # ---- lineage -------------------------------------------------------------------------------

    def lineage(self, trainer_version: int) -> pa.Table:
        """Lineage rows of one trainer version, in batch order."""
        where = sql_and(f"trainer_version = {int(trainer_version)}", self._run_filter())
        return self._scan(self._lineage, where, list(LINEAGE_SCHEMA.names)).sort_by("position")

    def replay(self, trainer_version: int, columns: Sequence[str] | None = None) -> pa.Table:
        """The exact rows that trained `trainer_version`, in batch order."""
        ids = self.lineage(trainer_version)["trajectory_id"].to_pylist()
        if not ids:
            raise KeyError(f"no batch recorded for trainer version {trainer_version}")
        return self._fetch_by_ids(ids, self._columns(columns))

    def trained_versions(self, trajectory_id: str) -> list[int]:
        """Trainer versions that consumed this trajectory (usually one)."""
        where = sql_and(f"trajectory_id = {sql_string(trajectory_id)}", self._run_filter())
        return sorted(
            self._scan(self._lineage, where, ["trainer_version"])["trainer_version"].to_pylist()
        )

    # ---- step selection ------------------------------------------------------------------------

    def record_step_selection(
        self,
        trainer_version: int,
        kept_turns: dict[str, list[int]],
        turn_entropies: dict[str, list[float]],
    ) -> None:
        """Record which turns of each trajectory trained `trainer_version` (`kept_turns`, turn
        indices) and every turn's mean token entropy (`turn_entropies`, one per turn). The same
        selection again is a no-op (safe to retry); another one for a recorded version is an error."""
        ids = list(kept_turns)
        num_turns = self._fetch_by_ids(ids, ["trajectory_id", "num_turns"])  # KeyError if unknown
        counts = dict(zip(ids, num_turns["num_turns"].to_pylist()))
        rows = step_selection_rows(self.run_id, trainer_version, kept_turns, turn_entropies, counts)
        recorded = self.step_selection(trainer_version)
        if recorded.num_rows:
            if same_selection(recorded, rows):
                return
            raise ValueError(f"trainer version {trainer_version} already has another step selection recorded")
        if rows.num_rows:
            lance_tables.add_with_retry(self._steps, rows)
            self._count_write()

    def step_selection(self, trainer_version: int) -> pa.Table:
        """Step-selection rows of one trainer version (empty if none was recorded), in recorded order."""
        where = sql_and(f"trainer_version = {int(trainer_version)}", self._run_filter())
        return self._scan(self._steps, where, list(STEP_SELECTION_SCHEMA.names)).sort_by("position")

    # ---- experience pool -----------------------------------------------------------------------

    def pool_add(self, trajectories: pa.Table, capacity_per_problem: int) -> int:
        """Pool the successes of `trajectories` (full TRAJECTORY_SCHEMA rows; failures, pooled
        copies and ids already pooled are ignored) into this run's pool; each problem keeps its
        `capacity_per_problem` newest members (experience_pool module), evicting older ones in the
        same commit. Returns how many rows entered the pool (a success older than a full
        problem's members does not). One writer per run's pool (the trainer)."""
        if capacity_per_problem < 1:
            raise ValueError(f"capacity_per_problem must be >= 1, got {capacity_per_problem}")
        present = [c for c in TRAJECTORY_COLUMNS if c in trajectories.column_names]
        candidates = poolable(self.validate(trajectories.select(present)))
        if not candidates.num_rows:
            return 0
        problems = sql_in("problem_id", set(candidates["problem_id"].to_pylist()))
        existing = self._scan(self._pool, sql_and(self._pool_scope(), problems), list(POOL_RANK_COLUMNS))
        entering, evicted = pool_update(existing, candidates, capacity_per_problem)
        if not entering.num_rows and not evicted:
            return 0
        delete = sql_and(self._pool_scope(), sql_in("trajectory_id", evicted)) if evicted else None
        rows = pool_rows(entering, self.run_id)
        lance_tables.insert_and_delete(self._pool, rows, ["pool_run_id", "trajectory_id"], delete)
        self._count_write()
        return entering.num_rows

    def pool_members(
        self,
        problem_id: str | None = None,
        *,
        environment: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """This run's pool (all runs' with run_id None), optionally of one problem / environment:
        rows of POOL_SCHEMA (or `columns` of it), by problem, newest first within a problem."""
        columns = list(POOL_SCHEMA.names) if columns is None else list(columns)
        unknown = [c for c in columns if c not in POOL_SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the pool has {POOL_SCHEMA.names}")
        read = list(dict.fromkeys([*columns, *POOL_RANK_COLUMNS]))  # newest_first sorts on these
        rows = newest_first(self._scan(self._pool, self._pool_where(problem_id, environment), read))
        return rows.select(columns)

    def pool_count(self, problem_id: str | None = None, *, environment: str | None = None) -> int:
        """Number of rows in this run's pool (all runs' with run_id None), of one problem if given."""
        return self._pool.count_rows(self._pool_where(problem_id, environment))

    def inject_pooled(self, pooled_row: pa.Table, group_id: str) -> pa.Table:
        """Append the copy of a pooled success (one row, e.g. of pool_members) that joins `group_id`
        (experience_pool.pooled_copy: source "pool", a new id, the original's tokens, behaviour
        log-probs and versions, metadata naming the original), under this store's run id; returns
        the stored row. Its id is derived from (original, group): calling again returns the row
        already stored instead of writing a second copy (safe to retry after a crash)."""
        if pooled_row.num_rows != 1:
            raise ValueError(f"inject_pooled takes one row, got {pooled_row.num_rows}")
        new_id = pooled_trajectory_id(pooled_row["trajectory_id"][0].as_py(), group_id)
        stored = self._scan(self._trajectories, f"trajectory_id = {sql_string(new_id)}", list(TRAJECTORY_COLUMNS))
        if stored.num_rows:
            return stored.slice(0, 1)
        copy = self.validate(pooled_copy(pooled_row, group_id, new_id, run_id=self.run_id))
        self._append_validated(copy)
        return copy

    # ---- statistics ----------------------------------------------------------------------------

    def problem_stats(
        self,
        *,
        run_id: str | None = None,
        environment: str | None = None,
        split: str | None = None,
        source: str | None = "rollout",
    ) -> pl.DataFrame:
        """Per-problem attempts, successes, success_rate, mean_reward, last_policy_version. Filters
        left None are not applied; `source` defaults to rollouts (demonstrations are no attempts)."""
        filters = {"run_id": run_id, "environment": environment, "split": split, "source": source}
        where = sql_and(*(f"{k} = {sql_string(v)}" for k, v in filters.items() if v is not None))
        return problem_stats(self._scan(self._trajectories, where, list(STATS_COLUMNS)))

    def count(self, where: str | None = None) -> int:
        return self._trajectories.count_rows(where)

    # ---- time travel ---------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Latest version of the trajectories table."""
        return self._trajectories.version

    def versions(self) -> list[TableVersion]:
        return [
            TableVersion(v["version"], v["timestamp"], int(v["metadata"].get("total_rows", 0)))
            for v in self._trajectories.list_versions()
        ]

    def as_of(
        self, version: int, *, where: str | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """The trajectories table as it was at `version` (see `versions()`)."""
        table = self._db.open_table(TRAJECTORIES_TABLE)
        table.checkout(version)
        return self._scan(table, where, self._columns(columns))

    # ---- maintenance ---------------------------------------------------------------------------

    def compact(self, *, prune_older_than: timedelta | None = None) -> None:
        """Merge small fragments of the tables, refresh their indices (creating missing ones).
        Rows appended meanwhile by other processes are kept. Old versions stay readable unless
        `prune_older_than` is given."""
        for table, indexed in (
            (self._trajectories, TRAJECTORY_INDEXED_COLUMNS),
            (self._lineage, LINEAGE_INDEXED_COLUMNS),
            (self._pool, ()),  # small: capacity x hard problems
            (self._steps, STEP_SELECTION_INDEXED_COLUMNS),
        ):
            lance_tables.compact(table, prune_older_than)
            lance_tables.ensure_btree_indices(table, indexed)
        self._writes_since_compaction = 0

    def maybe_compact(self) -> bool:
        """Compact if this process wrote `compact_every_appends` times since the last compaction.
        A compaction that loses a race with another process's compaction is skipped, not raised."""
        if not self.compact_every_appends or self._writes_since_compaction < self.compact_every_appends:
            return False
        try:
            self.compact(prune_older_than=self.prune_versions_older_than)
        except Exception as error:  # opportunistic: the next call tries again
            if not lance_tables.is_retryable(error):
                raise
            log.warning("compaction skipped after a concurrent commit: %s", error)
            self._writes_since_compaction = 0
            return False
        return True

    # ---- helpers -------------------------------------------------------------------------------

    def _count_write(self) -> None:
        self._writes_since_compaction += 1
        self.maybe_compact()

    def _run_filter(self) -> str | None:
        return None if self.run_id is None else f"run_id = {sql_string(self.run_id)}"

    def _pool_scope(self) -> str:
        # The pool of a store without run id is the one of pool_run_id null (what pool_add writes).
        return "pool_run_id IS NULL" if self.run_id is None else f"pool_run_id = {sql_string(self.run_id)}"

    def _pool_where(self, problem_id: str | None, environment: str | None) -> str | None:
        scope = None if self.run_id is None else self._pool_scope()
        filters = {"problem_id": problem_id, "environment": environment}
        return sql_and(scope, *(f"{k} = {sql_string(v)}" for k, v in filters.items() if v is not None))

    @staticmethod
    def _columns(columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return list(TRAJECTORY_COLUMNS)
        unknown = [c for c in columns if c not in TRAJECTORY_COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the schema has {list(TRAJECTORY_COLUMNS)}")
        return list(columns) if "trajectory_id" in columns else ["trajectory_id", *columns]

    @staticmethod
    def _scan(table, where: str | None, columns: list[str], with_row_id: bool = False) -> pa.Table:
        # limit(None): every matching row (LanceDB versions differ on the default limit).
        query = table.search().select(columns).limit(None).with_row_id(with_row_id)
        if where:
            query = query.where(where)
        return query.to_arrow()

    def _fetch_by_ids(self, ids: list[str], columns: list[str]) -> pa.Table:
        if not ids:
            return TRAJECTORY_SCHEMA.empty_table().select(columns)
        return order_like(self._scan(self._trajectories, sql_in("trajectory_id", ids), columns), ids)

