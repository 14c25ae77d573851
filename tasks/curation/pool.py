"""Experience pool rules (trainer side): which rows enter the pool, which groups get a pooled success.

A group of a hard problem with no success has zero group-relative advantage for every member: the
policy learns nothing from it. One pooled success of the same problem joining the group gives the
failures a negative advantage against it and the success a positive one. The pooled row keeps its
own behaviour log-probs and policy versions, so the trainer's truncated importance weights see how
off-policy it is.

The flow, per trained batch (the store does the I/O):

    store.pool_add(pool_candidates(batch, hard), capacity)           # successes of hard problems
    for group_id, member in plan_injections(batch, store.pool_members(), hard):
        batch = concat(batch, store.inject_pooled(member, group_id))  # source "pool", new id

`pooled_copy` (storage.experience_pool) is the row `inject_pooled` appends; re-exported here.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc

from dartflow.storage.experience_pool import POOL_KEY, pooled_copy, pooled_trajectory_id

__all__ = [
    "groups_without_success",
    "plan_injections",
    "pool_candidates",
    "choose_pooled",
    "pooled_copy",
    "pooled_trajectory_id",
]

# A problem is named by its id (any environment) or by (environment, problem_id).
ProblemIds = Collection["str | tuple[str, str]"]


def groups_without_success(batch: pa.Table) -> list[str]:
    """Ids of the groups of `batch` none of whose rows succeeded (null success counts as failure),
    in order of first appearance. Reads group_id and success."""
    succeeded: dict[str, bool] = {}
    for group_id, success in zip(batch["group_id"].to_pylist(), batch["success"].to_pylist()):
        succeeded[group_id] = succeeded.get(group_id, False) or bool(success)
    return [group_id for group_id, any_success in succeeded.items() if not any_success]


def pool_candidates(
    rows: pa.Table, hard_problem_ids: ProblemIds, *, sources: Collection[str] = ("rollout",)
) -> pa.Table:
    """The rows to offer the pool: successes of hard problems from the train split whose source is
    one of `sources` (add "demonstration" to pool scripted successes). Held-out rows never enter:
    training on them would leak the held-out split."""
    keep = pc.and_(
        pc.and_(pc.fill_null(rows["success"], False), pc.equal(rows["split"], "train")),
        pc.is_in(rows["source"], value_set=pa.array(list(sources), pa.string())),
    )
    return rows.filter(pc.and_(keep, _is_hard(rows, hard_problem_ids)))


def choose_pooled(members: pa.Table, group_id: str) -> pa.Table:
    """One row of `members` (the pool rows of the group's problem) for `group_id`: picked by a
    stable hash of the group id, so members take turns across groups and a retried injection
    picks the same one. `members` in a stable order (pool_members: newest first)."""
    if not members.num_rows:
        raise ValueError(f"no pooled member to choose for group {group_id!r}")
    return members.slice(zlib.crc32(group_id.encode()) % members.num_rows, 1)


def plan_injections(
    batch: pa.Table, members: pa.Table, hard_problem_ids: ProblemIds | None = None
) -> list[tuple[str, pa.Table]]:
    """(group id, pooled row) for each group of `batch` without a success whose problem has pool
    members (and is hard, when `hard_problem_ids` is given), in the order of the groups."""
    if not members.num_rows:
        return []
    hard = None if hard_problem_ids is None else _is_hard(batch, hard_problem_ids).to_pylist()
    problem_of: dict[str, tuple[str, str]] = {}
    for index, row in enumerate(batch.select(["group_id", *POOL_KEY]).to_pylist()):
        if hard is None or hard[index]:
            problem_of.setdefault(row["group_id"], (row["environment"], row["problem_id"]))
    member_keys = list(zip(members["environment"].to_pylist(), members["problem_id"].to_pylist()))
    plan = []
    for group_id in groups_without_success(batch):
        if group_id not in problem_of:
            continue
        rows = [i for i, key in enumerate(member_keys) if key == problem_of[group_id]]
        if rows:
            plan.append((group_id, choose_pooled(members.take(pa.array(rows, pa.int64())), group_id)))
    return plan


def _is_hard(rows: pa.Table, hard_problem_ids: ProblemIds) -> pa.Array:
    by_id = pa.array([p for p in hard_problem_ids if isinstance(p, str)], pa.string())
    by_key = pa.array(["\x00".join(p) for p in hard_problem_ids if not isinstance(p, str)], pa.string())
    keys = pc.binary_join_element_wise(rows["environment"], rows["problem_id"], "\x00")
    mask = pc.or_(pc.is_in(rows["problem_id"], value_set=by_id), pc.is_in(keys, value_set=by_key))
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask
