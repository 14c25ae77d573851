"""Experience pool rows: successful trajectories kept per hard problem (pure builders and rules).

A pool row is a full trajectory row (TRAJECTORY_SCHEMA) plus `pool_run_id` and `pooled_at`
(POOL_SCHEMA): a pooled success joins a batch with its own tokens, behaviour log-probs and policy
versions, with no second lookup, and the pool can hold demonstrations that no trajectories table of
this run holds. Pools are small (capacity x hard problems), so the copy costs little.

Per problem (environment, problem_id) the pool keeps the `capacity` newest members, newest by the
trajectory itself (max_policy_version, then created_at, then trajectory_id), not by when it was
pooled: the outcome does not depend on the order of the adds, and the policy's own recent successes
(closest to the current policy, so the mildest importance weights) push out older ones and scripted
demonstrations (version 0).

When a pooled success joins a group, `pooled_copy` makes it a new trajectory row (source "pool", a
new id, the group's id); appended to the trajectories table, it trains, is recorded in the lineage
and replays like any other row.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dartflow.storage.schema import POOL_SCHEMA, TRAJECTORY_COLUMNS, TRAJECTORY_SCHEMA

POOL_SOURCE = "pool"
POOL_KEY = ("environment", "problem_id")
# Newest first: the order members are kept in, and the order pool_members returns them in.
NEWEST_FIRST = (("max_policy_version", True), ("created_at", True), ("trajectory_id", True))
# The columns the capacity rule reads.
POOL_RANK_COLUMNS = ("trajectory_id", *POOL_KEY, "max_policy_version", "created_at")
# Namespace of the deterministic ids of pooled copies (uuid5).
_POOLED_ID_NAMESPACE = uuid.UUID("8f0d7d2e-6a43-4f7c-9a57-2f1c3e5b9d10")


def poolable(trajectories: pa.Table) -> pa.Table:
    """The rows that may enter a pool: successes that are not pooled copies themselves, each
    trajectory_id once (its first row)."""
    keep = pc.and_(
        pc.fill_null(trajectories["success"], False),
        pc.not_equal(trajectories["source"], POOL_SOURCE),
    )
    rows = trajectories.filter(keep)
    first: dict[str, int] = {}
    for position, trajectory_id in enumerate(rows["trajectory_id"].to_pylist()):
        first.setdefault(trajectory_id, position)
    if len(first) == rows.num_rows:
        return rows
    return rows.take(pa.array(sorted(first.values()), pa.int64()))


def pool_rows(trajectories: pa.Table, pool_run_id: str | None, pooled_at: datetime | None = None) -> pa.Table:
    """POOL_SCHEMA rows of `trajectories` (TRAJECTORY_SCHEMA rows) for the pool of `pool_run_id`."""
    n = trajectories.num_rows
    pooled_at = pooled_at or datetime.now(UTC)
    columns = [
        pa.array([pool_run_id] * n, pa.string()),
        pa.array([pooled_at] * n, pa.timestamp("us", tz="UTC")),
        *(trajectories[name] for name in TRAJECTORY_COLUMNS),
    ]
    return pa.Table.from_arrays(columns, schema=POOL_SCHEMA)


def plan_pool_update(existing: pa.Table, new: pa.Table, capacity: int) -> tuple[list[str], list[str]]:
    """(ids of `new` that enter the pool, ids of `existing` evicted) so that each problem keeps its
    `capacity` newest members. Both tables need POOL_RANK_COLUMNS; `new` holds no existing id. A
    problem already over capacity (a smaller capacity than before) is cut down too."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    columns = list(POOL_RANK_COLUMNS)
    frame = pl.concat(
        [
            pl.from_arrow(existing.select(columns)).with_columns(pl.lit(False).alias("is_new")),
            pl.from_arrow(new.select(columns)).with_columns(pl.lit(True).alias("is_new")),
        ],
        how="vertical_relaxed",
    )
    names, descending = zip(*NEWEST_FIRST)
    rank = pl.int_range(pl.len()).over(list(POOL_KEY))
    ranked = frame.sort(list(names), descending=list(descending)).with_columns(rank.alias("rank"))
    kept = ranked["rank"] < capacity
    entering = ranked.filter(kept & ranked["is_new"])["trajectory_id"].to_list()
    evicted = ranked.filter(~kept & ~ranked["is_new"])["trajectory_id"].to_list()
    return entering, evicted


def pool_update(existing: pa.Table, candidates: pa.Table, capacity: int) -> tuple[pa.Table, list[str]]:
    """(rows of `candidates` that enter the pool, ids of `existing` members evicted). `existing`
    holds POOL_RANK_COLUMNS of the pool's members (of at least the candidates' problems);
    `candidates` are `poolable` trajectory rows. Candidates already pooled are left out."""
    existing = existing.filter(pc.is_in(_problem_keys(existing), value_set=_problem_keys(candidates)))
    new = candidates.filter(pc.invert(pc.is_in(candidates["trajectory_id"], value_set=existing["trajectory_id"])))
    entering, evicted = plan_pool_update(existing, new, capacity)
    return new.filter(pc.is_in(new["trajectory_id"], value_set=pa.array(entering, pa.string()))), evicted


def _problem_keys(table: pa.Table) -> pa.ChunkedArray:
    # problem ids are unique only within an environment
    return pc.binary_join_element_wise(table["environment"], table["problem_id"], "\x00")


def newest_first(members: pa.Table) -> pa.Table:
    """Pool rows ordered by problem, then newest first within each problem."""
    keys = [(name, "ascending") for name in POOL_KEY]
    keys += [(name, "descending" if desc else "ascending") for name, desc in NEWEST_FIRST]
    return members.sort_by(keys)


def pooled_trajectory_id(original_id: str, group_id: str) -> str:
    """The id of the copy of `original_id` that joins `group_id`: the same on every call, so an
    injection retried after a crash finds its first copy instead of writing a second one."""
    return uuid.uuid5(_POOLED_ID_NAMESPACE, f"{group_id}\x00{original_id}").hex


def pooled_copy(
    row: pa.Table,
    group_id: str,
    new_trajectory_id: str,
    *,
    run_id: str | None = None,
    created_at: datetime | None = None,
) -> pa.Table:
    """The trajectory row (TRAJECTORY_SCHEMA) a pooled success becomes when it joins `group_id`.

    `row` is one trajectory row (a pool row's extra columns are ignored). The copy keeps the
    original's tokens, behaviour log-probs, policy versions, reward and success unchanged, so the
    trainer's importance weights are those of the policy that really sampled it; it gets source
    "pool", `new_trajectory_id`, `group_id`, `run_id` (None: the original's), `created_at` (None:
    now), and metadata_json adds `"pooled": true` and `"pooled_from"` (the original's
    trajectory_id, run_id, group_id and source) to the original's metadata.
    """
    if row.num_rows != 1:
        raise ValueError(f"pooled_copy takes one row, got {row.num_rows}")
    original = row.select(list(TRAJECTORY_COLUMNS)).to_pylist()[0]
    if original["source"] == POOL_SOURCE:
        raise ValueError(f"trajectory {original['trajectory_id']!r} is a pooled copy already")
    if not original["success"]:
        raise ValueError(f"trajectory {original['trajectory_id']!r} is not a success")
    metadata = json.loads(original["metadata_json"] or "{}")
    if not isinstance(metadata, dict):
        metadata = {"metadata": metadata}
    metadata["pooled"] = True
    metadata["pooled_from"] = {name: original[name] for name in ("trajectory_id", "run_id", "group_id", "source")}
    replaced = {
        "trajectory_id": new_trajectory_id,
        "group_id": group_id,
        "source": POOL_SOURCE,
        "run_id": run_id or original["run_id"],
        "created_at": created_at or datetime.now(UTC),
        "metadata_json": json.dumps(metadata, sort_keys=True),
    }
    columns = [
        pa.array([replaced[f.name]], f.type) if f.name in replaced else row[f.name].combine_chunks().cast(f.type)
        for f in TRAJECTORY_SCHEMA
    ]
    return pa.Table.from_arrays(columns, schema=TRAJECTORY_SCHEMA)
