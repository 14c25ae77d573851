"""Batch selection that keeps groups whole: advantages are computed inside a group."""

from __future__ import annotations

import pyarrow as pa


def whole_groups(batch_size: int):
    """A `TrajectoryStore.next_batch` selector: the oldest whole groups, at most `batch_size` rows.

    Candidates arrive oldest first; a group is taken with all its candidate rows or not at all. A
    group that does not fit in what is left is passed over for younger ones that do (groups of
    different sizes, from curation's rollout budget, would otherwise stop the batch at the first
    large one).
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
        return chosen

    return select


def training_groups(
    batch_size: int,
    *,
    drop_equal_rewards: bool = False,
    reward_tolerance: float = 0.0,
    dropped_groups: set[str] | None = None,
):
    """The trainer's selector: `whole_groups`, after dynamic sampling when `drop_equal_rewards` (groups
    whose rewards are all equal carry no advantage and are passed over; their ids are added to
    `dropped_groups`, so the caller can count each once however often it polls)."""
    from dartflow.tasks.curation.selection import informative_groups

    take = whole_groups(batch_size)

    def select(candidates: pa.Table) -> list[str]:
        if drop_equal_rewards:
            kept, _ = informative_groups(candidates, reward_tolerance=reward_tolerance)
            if dropped_groups is not None:
                dropped_groups.update(set(candidates["group_id"].to_pylist()) - set(kept["group_id"].to_pylist()))
            candidates = kept
        return take(candidates)

    return select
