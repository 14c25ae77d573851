import pyarrow as pa

from dartflow.tasks.curation.groups import whole_groups


def test_takes_oldest_whole_groups_and_never_splits_one():
    candidates = pa.table(
        {
            "trajectory_id": ["a1", "b1", "a2", "b2", "c1", "c2", "c3"],
            "group_id": ["a", "b", "a", "b", "c", "c", "c"],
        }
    )
    assert whole_groups(4)(candidates) == ["a1", "a2", "b1", "b2"]
    assert whole_groups(6)(candidates) == ["a1", "a2", "b1", "b2"]  # group c (3 rows) does not fit
    assert whole_groups(7)(candidates) == ["a1", "a2", "b1", "b2", "c1", "c2", "c3"]
    assert whole_groups(1)(candidates) == []
