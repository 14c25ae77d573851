"""Group advantages: how much better each trajectory did than the others sampled for its problem.

A group is the set of trajectories sampled for one problem at one time (the `group_id` column).
The baseline comes from the group itself, so no value network is needed (GRPO, Shao et al. 2024,
https://arxiv.org/abs/2402.03300; RLOO, Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740).
One function per estimator, picked by `TrainingConfig.advantage`. Groups are computed over the
trajectories present in the batch; a group of one carries no signal (advantage 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ADVANTAGE_EPS = 1e-6  # keeps A finite when a group's std is ~0


def group_index(group_ids: Sequence[str]) -> torch.Tensor:
    """Dense group index per trajectory, in order of first appearance. Shape (n,), int64."""
    first_seen: dict[str, int] = {}
    return torch.tensor([first_seen.setdefault(g, len(first_seen)) for g in group_ids], dtype=torch.int64)


def _group_mean_and_count(rewards: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean reward and size of each trajectory's group, broadcast back. Shapes (n,), (n,)."""
    num_groups = int(groups.max()) + 1 if groups.numel() else 0
    sums = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, groups, rewards)
    counts = torch.zeros(num_groups, dtype=rewards.dtype).index_add_(0, groups, torch.ones_like(rewards))
    return (sums / counts)[groups], counts[groups]


def grpo_no_std_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """A = R - mean(R of the group) (Dr. GRPO: no std scaling). Shapes: (n,) -> (n,)."""
    mean, _ = _group_mean_and_count(rewards, groups)
    return rewards - mean


def grpo_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = ADVANTAGE_EPS) -> torch.Tensor:
    """A = (R - mean R) / (std R + eps), population std of the group. Shapes: (n,) -> (n,)."""
    centered = grpo_no_std_advantages(rewards, groups)
    variance, _ = _group_mean_and_count(centered.square(), groups)
    return centered / (variance.sqrt() + eps)


def rloo_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean of the *other* rewards of the group = n/(n-1) (R_i - mean R); 0 for n=1."""
    mean, count = _group_mean_and_count(rewards, groups)
    leave_one_out_scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return leave_one_out_scale * (rewards - mean)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "grpo": grpo_advantages,
    "grpo_no_std": grpo_no_std_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(rewards: torch.Tensor, groups: torch.Tensor, estimator: str) -> torch.Tensor:
    """Advantages of `estimator` (a key of ADVANTAGE_ESTIMATORS). Shapes: (n,), (n,) -> (n,)."""
    try:
        advantage_fn = ADVANTAGE_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; one of {sorted(ADVANTAGE_ESTIMATORS)}") from None
    return advantage_fn(rewards, groups)


def zero_signal_group_fraction(rewards: torch.Tensor, groups: torch.Tensor) -> float:
    """Fraction of groups whose rewards are all equal (a group of one included): no gradient."""
    if groups.numel() == 0:
        return 0.0
    num_groups = int(groups.max()) + 1
    highest = torch.full((num_groups,), -torch.inf, dtype=rewards.dtype).scatter_reduce(0, groups, rewards, "amax")
    lowest = torch.full((num_groups,), torch.inf, dtype=rewards.dtype).scatter_reduce(0, groups, rewards, "amin")
    return (highest == lowest).double().mean().item()
