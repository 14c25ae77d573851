"""Choosing the next training batch: pure functions over the candidates' light columns.

Staleness of a trajectory = trainer version - min_policy_version (the version of its oldest token).
A trajectory is admissible while staleness <= max_staleness and it was not consumed yet. Among the
admissible ones the oldest go first (lowest min_policy_version, then created_at): they are the next
to expire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

Selector = Callable[[pa.Table], "pa.Table | list[str]"]

OLDEST_FIRST = [
    ("min_policy_version", "ascending"),
    ("created_at", "ascending"),
    ("trajectory_id", "ascending"),
]


def sql_string(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"


def sql_and(*clauses: str | None) -> str | None:
    parts = [f"({c})" for c in clauses if c]
    return " AND ".join(parts) or None


def oldest_admissible_version(trainer_version: int, max_staleness: int) -> int:
    """The lowest min_policy_version whose staleness is still <= max_staleness."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    return trainer_version - max_staleness


def staleness_filter(trainer_version: int, max_staleness: int) -> str:
    """SQL filter pushed down to the scan (served by the BTree index on min_policy_version)."""
    return f"min_policy_version >= {oldest_admissible_version(trainer_version, max_staleness)}"


def staleness(trainer_version: int, min_policy_version: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pc.subtract(pa.scalar(trainer_version, pa.int64()), min_policy_version)


def admissible_candidates(
    candidates: pa.Table,
    consumed_ids: pa.Array | pa.ChunkedArray,
    trainer_version: int,
    max_staleness: int,
) -> pa.Table:
    """Candidates that are fresh enough and not consumed, oldest first."""
    fresh = pc.less_equal(staleness(trainer_version, candidates["min_policy_version"]), max_staleness)
    consumed = pc.is_in(candidates["trajectory_id"], value_set=pa.array(consumed_ids, pa.string()))
    unconsumed = pc.invert(consumed)
    return candidates.filter(pc.and_(fresh, unconsumed)).sort_by(OLDEST_FIRST)


def choose_batch(candidates: pa.Table, batch_size: int, select: Selector | None = None) -> list[str]:
    """Ids of the chosen trajectories, in batch order.

    Without `select`: the first `batch_size` candidates (oldest first). With `select`: the callable
    receives the admissible candidates and returns the chosen rows (a table with `trajectory_id`)
    or ids; they must be among the candidates, and at most `batch_size` of them are kept.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if select is None:
        return candidates["trajectory_id"].slice(0, batch_size).to_pylist()
    chosen = select(candidates)
    ids = chosen["trajectory_id"].to_pylist() if isinstance(chosen, pa.Table) else list(chosen)
    if len(set(ids)) != len(ids):
        raise ValueError("select returned the same trajectory_id twice")
    unknown = pc.invert(pc.is_in(pa.array(ids, pa.string()), value_set=candidates["trajectory_id"]))
    if (index := pc.index(unknown, True).as_py()) >= 0:
        raise ValueError(
            f"select returned {ids[index]!r}, which is not an admissible candidate "
            "(consumed, too stale, filtered out, or unknown)"
        )
    return ids[:batch_size]


def order_like(table: pa.Table, ids: list[str]) -> pa.Table:
    """Rows of `table` in the order of `ids`; raises if one is missing."""
    positions = pc.index_in(pa.array(ids, pa.string()), value_set=table["trajectory_id"])
    if positions.null_count:
        missing = ids[pc.index(pc.is_null(positions), True).as_py()]
        raise KeyError(f"trajectory {missing!r} not found in the store")
    return table.take(positions)
