import random

import polars as pl
import pytest

from dartflow.tasks.curation.budgets import (
    bucket_summary,
    rollout_counts,
    share_budget,
    target_group_size,
    turn_limits,
)
from dartflow.tasks.curation.difficulty import estimate_difficulty


def difficulty_frame(*counts: tuple[int, int], **extra) -> pl.DataFrame:
    """Beta(1,1) estimates of one problem per (attempts, successes): p = (s + 1) / (n + 2)."""
    return estimate_difficulty(
        pl.DataFrame(
            {
                "problem_id": [f"p{i}" for i in range(len(counts))],
                "attempts": [a for a, _ in counts],
                "successes": [s for _, s in counts],
                **extra,
            }
        )
    )


@pytest.mark.parametrize(
    ("p", "hit", "expected"),
    [
        (0.5, 0.5, 2),  # 1 rollout would do; min_size keeps a comparison
        (0.2, 0.5, 4),  # 0.8^3 = 0.512 > 0.5 >= 0.8^4 = 0.4096
        (0.1, 0.5, 7),  # 0.9^6 = 0.531 > 0.5 >= 0.9^7 = 0.478
        (0.5, 0.75, 2),  # 0.5^2 = 0.25 exactly: the edge counts as enough
        (0.3, 0.657, 3),  # 0.7^3 = 0.343 exactly, though the float log ratio is 3.000000000000001
        (0.2, 0.75, 7),  # 0.8^6 = 0.262 > 0.25 >= 0.8^7 = 0.210
        (0.01, 0.5, 16),  # wants 69, capped
    ],
)
def test_target_is_smallest_group_likely_to_hold_a_success(p, hit, expected):
    assert target_group_size(p, min_size=2, max_size=16, hit_probability=hit) == expected


def test_hard_problems_get_most_solved_and_hopeless_the_minimum():
    frame = rollout_counts(
        difficulty_frame((3, 0), (8, 0), (8, 8), (4, 2), (0, 0), (6, 0)), min_size=2, max_size=16, budget=100
    )
    # p:               0.2     0.1    0.9    0.5    prior 0.5  0.125 (0.875^5 = 0.513, ^6 = 0.449)
    assert frame["bucket"].cast(pl.String).to_list() == ["hard", "hopeless", "solved", "medium", "unknown", "hard"]
    assert frame["target_group_size"].to_list() == [4, 2, 2, 2, 2, 6]
    assert frame["group_size"].to_list() == [4, 2, 2, 2, 2, 6]  # budget 100 covers all 18


def test_unknown_problems_follow_the_prior():
    frame = estimate_difficulty(pl.DataFrame({"attempts": [0], "successes": [0]}), prior_alpha=1, prior_beta=4)
    # prior mean 0.2 -> like a measured p = 0.2
    assert rollout_counts(frame, min_size=2, max_size=16, budget=10)["group_size"].to_list() == [4]


def test_short_budget_shares_the_extra_by_largest_remainder():
    frame = rollout_counts(
        difficulty_frame((3, 0), (8, 0), (8, 8), (4, 2), (0, 0), (6, 0)), min_size=2, max_size=16, budget=14
    )
    # mins: 6 x 2 = 12; 2 left for wishes 2 (p0) and 4 (p5): shares 2/3 and 4/3 -> floors 0, 1;
    # the last unit goes to the larger remainder (p0: 2/3 > 1/3).
    assert frame["group_size"].to_list() == [3, 2, 2, 2, 2, 3]


def test_budget_below_min_size_times_problems_serves_fewer_problems_in_row_order():
    frame = rollout_counts(
        difficulty_frame((3, 0), (8, 0), (8, 8), (4, 2), (0, 0), (6, 0)), min_size=2, max_size=16, budget=7
    )
    # 7 // 2 = 3 groups (rows 0-2); the one rollout left goes to row 0, the only one wishing for more.
    assert frame["group_size"].to_list() == [3, 2, 2, 0, 0, 0]
    assert rollout_counts(difficulty_frame((3, 0)), min_size=2, max_size=16, budget=1)["group_size"].to_list() == [0]


def test_remainder_ties_go_to_the_earlier_row():
    assert share_budget([5, 5], min_size=2, budget=7) == [4, 3]  # shares 1.5, 1.5


def test_sizes_stay_within_bounds_and_budget_for_any_input():
    rng = random.Random(0)
    for _ in range(300):
        min_size = rng.randint(2, 4)
        targets = [rng.randint(min_size, 12) for _ in range(rng.randint(0, 9))]
        budget = rng.randint(0, 80)
        sizes = share_budget(targets, min_size=min_size, budget=budget)
        assert sum(sizes) <= budget
        assert all(size == 0 or min_size <= size <= target for size, target in zip(sizes, targets))
        served = [size > 0 for size in sizes]
        assert served == sorted(served, reverse=True)  # served rows are a prefix
        if sum(targets) <= budget:
            assert sizes == targets
        elif budget >= min_size * len(targets):
            assert sum(sizes) == budget  # a short budget is spent entirely


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"min_size": 1, "max_size": 8, "budget": 10}, "min_size"),
        ({"min_size": 4, "max_size": 2, "budget": 10}, "max_size"),
        ({"min_size": 2, "max_size": 8, "budget": -1}, "budget"),
        ({"min_size": 2, "max_size": 8, "budget": 10, "hit_probability": 1.0}, "hit_probability"),
    ],
)
def test_bad_budget_arguments_are_rejected_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named):
        rollout_counts(difficulty_frame((1, 0)), **kwargs)


def test_turn_limit_grows_with_difficulty_and_unknown_gets_the_bound():
    frame = turn_limits(
        difficulty_frame((4, 3), (8, 8), (8, 0), (0, 0), (4, 2)), min_turns=2, max_turns=10, env_max_turns=12
    )
    # difficulty:  1/3 -> 2 + round(8/3 = 2.67)   0.1 -> 2 + round(0.8)   0.9 -> 2 + round(7.2)   0.5 -> 2 + 4
    assert frame["turn_limit"].to_list() == [5, 3, 9, 12, 6]


def test_turn_limit_without_max_spans_up_to_the_environment_bound():
    frame = turn_limits(difficulty_frame((4, 2), (8, 0)), min_turns=2, max_turns=None, env_max_turns=12)
    assert frame["turn_limit"].to_list() == [7, 11]  # 2 + round(10 x 0.5), 2 + round(10 x 0.9)


def test_turn_limit_never_exceeds_the_environment_or_the_problem():
    frame = turn_limits(
        difficulty_frame((8, 0), (0, 0), (8, 0), (0, 0), problem_max_turns=[4, 5, None, None]),
        min_turns=2,
        max_turns=10,
        env_max_turns=8,
    )
    assert frame["turn_limit"].to_list() == [4, 5, 8, 8]
    low_env = turn_limits(difficulty_frame((8, 8), (8, 0)), min_turns=5, max_turns=10, env_max_turns=3)
    assert low_env["turn_limit"].to_list() == [3, 3]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"min_turns": 0, "max_turns": 4, "env_max_turns": 8}, "min_turns"),
        ({"min_turns": 5, "max_turns": 4, "env_max_turns": 8}, "max_turns"),
        ({"min_turns": 1, "max_turns": 4, "env_max_turns": 0}, "env_max_turns"),
    ],
)
def test_bad_turn_arguments_are_rejected_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named):
        turn_limits(difficulty_frame((1, 0)), **kwargs)


def test_bucket_summary_counts_problems_and_rollouts_per_bucket():
    frame = rollout_counts(
        difficulty_frame((3, 0), (8, 0), (8, 8), (4, 2), (0, 0), (6, 0)), min_size=2, max_size=16, budget=14
    )
    metrics = bucket_summary(frame)
    assert metrics["curation/problems_hard"] == 2 and metrics["curation/rollouts_hard"] == 6
    assert metrics["curation/problems_solved"] == 1 and metrics["curation/rollouts_solved"] == 2
    assert metrics["curation/problems_easy"] == 0 and metrics["curation/rollouts_easy"] == 0
    assert sum(v for k, v in metrics.items() if k.startswith("curation/rollouts_")) == 14
