"""Batch selection that keeps groups whole: advantages are computed inside a group."""

from __future__ import annotations

import pyarrow as pa


def whole_groups(batch_size: int, passed_over: list[int] | None = None):
    """A `TrajectoryStore.next_batch` selector: the oldest whole groups, at most `batch_size` rows.

    Candidates arrive oldest first; a group is taken with all its candidate rows or not at all. A
    group that does not fit in what is left is passed over for younger ones that do (groups of
    different sizes, from curation's rollout budget, would otherwise stop the batch at the first
    large one). The sizes of the groups passed over are appended to `passed_over` when given: a
    batch that passed over a group is as full as the groups in the store let it be now.
    """

    def select(candidates: pa.Table) -> list[str]:
        members: dict[str, list[str]] = {}  # insertion order = age order of each group's first row
        for group_id, trajectory_id in zip(
            candidates["group_id"].to_pylist(), candidates["trajectory_id"].to_pylist()
        ):
            members.setdefault(group_id, []).append(trajectory_id)
        chosen: list[str] = []
        for ids in members.values():
            if len(chosen) + len(ids) <= batch_size:
                chosen += ids
            elif passed_over is not None:
                passed_over.append(len(ids))
        return chosen

    return select


def training_groups(
    batch_size: int,
    *,
    drop_equal_rewards: bool = False,
    reward_tolerance: float = 0.0,
    dropped_groups: dict[str, list[str]] | None = None,
    poolable_problems: set[tuple[str, str]] | None = None,
    passed_over: list[int] | None = None,
):
    """The trainer's selector: `whole_groups`, after dynamic sampling when `drop_equal_rewards` (groups
    whose rewards are all equal carry no advantage and are passed over; their ids are added to
    `dropped_groups` (group id -> its trajectory ids), so the caller can count and release each once
    however often it polls). `passed_over` as in `whole_groups`. A group without
    any success of a problem in `poolable_problems` (environment, problem_id) is kept: the
    experience pool will add a success to it, which gives it an advantage. A group once dropped
    stays dropped (its staleness-gate room was released), whatever the poolable set becomes."""
    from dartflow.tasks.curation.selection import informative_groups

    take = whole_groups(batch_size, passed_over)

    def select(candidates: pa.Table) -> list[str]:
        if drop_equal_rewards:
            kept, _ = informative_groups(candidates, reward_tolerance=reward_tolerance)
            kept_ids = set(kept["group_id"].to_pylist())
            if poolable_problems:
                kept_ids |= _successless_groups_of(candidates, poolable_problems)
            if dropped_groups:
                kept_ids -= dropped_groups.keys()
            if dropped_groups is not None:
                for group_id, trajectory_id in zip(candidates["group_id"].to_pylist(), candidates["trajectory_id"].to_pylist()):
                    if group_id not in kept_ids:
                        dropped_groups.setdefault(group_id, [])
                        if trajectory_id not in dropped_groups[group_id]:
                            dropped_groups[group_id].append(trajectory_id)
            candidates = candidates.filter(pa.array([g in kept_ids for g in candidates["group_id"].to_pylist()], pa.bool_()))
        return take(candidates)

    return select


def _successless_groups_of(candidates: pa.Table, problems: set[tuple[str, str]]) -> set[str]:
    succeeded: dict[str, bool] = {}
    of_problem: dict[str, tuple[str, str]] = {}
    for row in candidates.select(["group_id", "environment", "problem_id", "success"]).to_pylist():
        succeeded[row["group_id"]] = succeeded.get(row["group_id"], False) or bool(row["success"])
        of_problem[row["group_id"]] = (row["environment"], row["problem_id"])
    return {g for g, ok in succeeded.items() if not ok and of_problem[g] in problems}
