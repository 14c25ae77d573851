"""Batch selection that keeps groups whole: advantages are computed inside a group."""

from __future__ import annotations

import pyarrow as pa


def whole_groups(batch_size: int):
    """A `TrajectoryStore.next_batch` selector: the oldest whole groups, at most `batch_size` rows.

    Candidates arrive oldest first; a group is taken with all its candidate rows or not at all.
    """

    def select(candidates: pa.Table) -> list[str]:
        members: dict[str, list[str]] = {}  # insertion order = age order of each group's first row
        for group_id, trajectory_id in zip(
            candidates["group_id"].to_pylist(), candidates["trajectory_id"].to_pylist()
        ):
            members.setdefault(group_id, []).append(trajectory_id)
        chosen: list[str] = []
        for ids in members.values():
            if len(chosen) + len(ids) > batch_size:
                break
            chosen += ids
        return chosen

    return select
