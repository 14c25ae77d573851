import pyarrow as pa

from dartflow.tasks.curation.groups import training_groups, whole_groups


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


def test_a_group_that_does_not_fit_is_passed_over_for_a_younger_one_that_does():
    candidates = pa.table({"trajectory_id": ["a1", "a2", "c1", "c2", "c3", "b1"], "group_id": ["a", "a", "c", "c", "c", "b"]})
    passed_over: list[int] = []
    assert whole_groups(3, passed_over)(candidates) == ["a1", "a2", "b1"] and passed_over == [3]
    assert whole_groups(5)(candidates) == ["a1", "a2", "c1", "c2", "c3"]


def test_training_groups_drops_groups_of_equal_rewards_and_remembers_them_once():
    candidates = pa.table(
        {
            "trajectory_id": ["a1", "a2", "b1", "b2", "c1", "c2"],
            "group_id": ["a", "a", "b", "b", "c", "c"],
            "reward": [1.0, 1.0, 0.0, 1.0, 0.5, 0.5],
        }
    )
    dropped: dict[str, list[str]] = {}
    select = training_groups(4, drop_equal_rewards=True, dropped_groups=dropped)
    assert select(candidates) == ["b1", "b2"]
    assert select(candidates) == ["b1", "b2"] and dropped == {"a": ["a1", "a2"], "c": ["c1", "c2"]}
    assert training_groups(4)(candidates) == ["a1", "a2", "b1", "b2"]  # off: every whole group
    assert training_groups(4, drop_equal_rewards=True, reward_tolerance=1.0)(candidates) == []


def test_successless_groups_of_poolable_problems_survive_dynamic_sampling():
    candidates = pa.table(
        {
            "trajectory_id": ["a1", "a2", "b1", "b2", "c1", "c2"],
            "group_id": ["a", "a", "b", "b", "c", "c"],
            "environment": ["e"] * 6,
            "problem_id": ["hard", "hard", "easy", "easy", "hard", "hard"],
            "reward": [0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
            "success": [False, False, True, True, True, True],
        }
    )
    dropped: dict[str, list[str]] = {}
    select = training_groups(6, drop_equal_rewards=True, dropped_groups=dropped, poolable_problems={("e", "hard")})
    assert select(candidates) == ["a1", "a2"]  # a: no success, poolable; b, c: all succeeded, equal rewards
    assert set(dropped) == {"b", "c"}


def test_a_dropped_group_stays_dropped_when_its_problem_becomes_poolable():
    # Its room in the staleness gate was released when it was dropped: training it later would
    # count it twice.
    candidates = pa.table(
        {
            "trajectory_id": ["a1", "a2"],
            "group_id": ["a", "a"],
            "environment": ["e"] * 2,
            "problem_id": ["p", "p"],
            "reward": [0.0, 0.0],
            "success": [False, False],
        }
    )
    dropped: dict[str, list[str]] = {}
    assert training_groups(4, drop_equal_rewards=True, dropped_groups=dropped)(candidates) == []
    later = training_groups(4, drop_equal_rewards=True, dropped_groups=dropped, poolable_problems={("e", "p")})
    assert later(candidates) == [] and dropped == {"a": ["a1", "a2"]}
