"""Group advantages against hand computations: GRPO, GRPO without std, RLOO, zero-signal groups."""

import math

import pytest
import torch

from dartflow.tasks.training.advantages import (
    ADVANTAGE_EPS,
    compute_advantages,
    group_index,
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
