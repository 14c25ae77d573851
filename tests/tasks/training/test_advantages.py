"""Group advantages against hand computations: GRPO, GRPO without std, RLOO, zero-signal groups."""

import math

import pytest
import torch

from dartflow.tasks.training.advantages import (
    ADVANTAGE_EPS,
    compute_advantages,
    group_index,
    rewards_to_go,
    turn_advantages,
    zero_signal_group_fraction,
)

# Group a: rewards 1, 0, 0, 1 (mean 0.5, population std 0.5); group b: all equal; group c: alone.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 5.0], dtype=torch.float64)
GROUPS = group_index(["a", "a", "a", "a", "b", "b", "c"])


def test_group_index_numbers_groups_in_order_of_first_appearance():
    assert group_index(["x", "y", "x", "z", "y"]).tolist() == [0, 1, 0, 2, 1]


def test_grpo_divides_the_centered_reward_by_the_group_std():
    scale = 0.5 / (0.5 + ADVANTAGE_EPS)
    expected = [scale, -scale, -scale, scale, 0.0, 0.0, 0.0]
    assert compute_advantages(REWARDS, GROUPS, "grpo").tolist() == pytest.approx(expected, abs=1e-12)


def test_grpo_on_an_uneven_group():
    # mean 1, population variance (1 + 1 + 4) / 3 = 2
    advantages = compute_advantages(torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0, 0, 0]), "grpo")
    std = math.sqrt(2)
    assert advantages.tolist() == pytest.approx([-1 / std, -1 / std, 2 / std], rel=1e-5)


def test_grpo_no_std_only_subtracts_the_group_mean():
    expected = [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0]
    assert compute_advantages(REWARDS, GROUPS, "grpo_no_std").tolist() == pytest.approx(expected)


def test_rloo_subtracts_the_mean_of_the_other_rewards():
    # 1 - mean(0, 0, 1) = 2/3; 0 - mean(1, 0, 1) = -2/3; a lone trajectory has no baseline: 0.
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0]
    assert compute_advantages(REWARDS, GROUPS, "rloo").tolist() == pytest.approx(expected)


@pytest.mark.parametrize("estimator", ["grpo", "grpo_no_std", "rloo"])
def test_interleaved_groups_give_the_same_advantages_as_sorted_ones(estimator):
    order = torch.tensor([6, 0, 4, 1, 2, 5, 3])
    shuffled = compute_advantages(REWARDS[order], GROUPS[order], estimator)
    assert torch.allclose(shuffled, compute_advantages(REWARDS, GROUPS, estimator)[order])


def test_fraction_of_groups_without_signal_counts_equal_and_single_trajectory_groups():
    assert zero_signal_group_fraction(REWARDS, GROUPS) == pytest.approx(2 / 3)
    assert zero_signal_group_fraction(torch.tensor([1.0, 0.0]), torch.tensor([0, 0])) == 0.0


def test_unknown_estimator_names_the_allowed_ones():
    with pytest.raises(ValueError, match="grpo_no_std"):
        compute_advantages(REWARDS, GROUPS, "ppo")


def test_rewards_to_go_sum_the_discounted_rewards_from_each_turn_on():
    assert rewards_to_go([0.1, 0.0, 1.0]) == pytest.approx([1.1, 1.0, 1.0])
    assert rewards_to_go([0.1, 0.0, 1.0], discount=0.5) == pytest.approx([0.1 + 0.25, 0.5, 1.0])
    assert rewards_to_go([]) == []


def test_trajectory_credit_gives_every_turn_its_trajectorys_advantage():
    groups = group_index(["a", "a"])
    advantages = turn_advantages(torch.tensor([1.0, 0.0]), [[0.0, 1.0], [0.0]], groups, "grpo_no_std")
    assert advantages.tolist() == [[0.5, 0.5], [-0.5, 0.0]]  # 0 past the second trajectory's end


def test_reward_to_go_compares_each_turn_with_the_same_turn_of_its_group():
    # Group a, three episodes; group b, one. Turn rewards: bonus 0.1 per good guess, 1 on success.
    turn_rewards = [[0.1, 0.1, 1.1], [0.0, 0.1, 0.0], [0.1, 0.0], [0.5]]
    totals = torch.tensor([1.3, 0.1, 0.1, 0.5], dtype=torch.float64)
    groups = group_index(["a", "a", "a", "b"])
    advantages = turn_advantages(totals, turn_rewards, groups, "grpo_no_std", credit="reward_to_go")
    # Returns-to-go: [1.3, 1.2, 1.1], [0.1, 0.1, 0.0], [0.1, 0.0], [0.5].
    # Turn 0 of group a: mean(1.3, 0.1, 0.1) = 0.5; turn 1: mean(1.2, 0.1, 0.0) = 0.4333..;
    # turn 2: mean(1.1, 0.0) = 0.55; group b's single episode and every cell of one: 0.
    expected = [
        [0.8, 1.2 - 1.3 / 3, 0.55],
        [-0.4, 0.1 - 1.3 / 3, -0.55],
        [-0.4, 0.0 - 1.3 / 3, 0.0],
        [0.0, 0.0, 0.0],
    ]
    assert advantages.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


def test_reward_to_go_counts_an_episode_level_reward_at_the_last_turn():
    # Total 1.0 but the turns only recorded 0.2: the 0.8 given for the whole episode lands on turn 1.
    groups = group_index(["a", "a"])
    advantages = turn_advantages(
        torch.tensor([1.0, 0.0]), [[0.2, 0.0], [0.0, 0.0]], groups, "grpo_no_std", credit="reward_to_go"
    )
    assert advantages.tolist() == [pytest.approx([0.5, 0.4]), pytest.approx([-0.5, -0.4])]


def test_turn_advantages_reject_an_unknown_credit_mode():
    with pytest.raises(ValueError, match="credit must be one of"):
        turn_advantages(torch.tensor([1.0]), [[1.0]], group_index(["a"]), "grpo", credit="per_token")
