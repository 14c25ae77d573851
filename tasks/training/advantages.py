"""Group advantages: how much better each trajectory did than the others sampled for its problem.

A group is the set of trajectories sampled for one problem at one time (the `group_id` column).
The baseline comes from the group itself, so no value network is needed (GRPO, Shao et al. 2024,
https://arxiv.org/abs/2402.03300; RLOO, Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740).
One function per estimator, picked by `TrainingConfig.advantage`. Groups are computed over the
trajectories present in the batch; a group of one carries no signal (advantage 0).

Multi-turn credit (`TrainingConfig.credit`, see `turn_advantages`): "trajectory" gives each turn its
trajectory's advantage; "reward_to_go" gives turn t the return from t on, compared with the same
turn of the other trajectories of its group, so a turn is credited only with what came after it.
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


CREDIT_MODES = ("trajectory", "reward_to_go")


def rewards_to_go(turn_rewards: Sequence[float], discount: float = 1.0) -> list[float]:
    """G_t = sum over k >= t of discount^(k-t) r_k, for every turn t of one trajectory."""
    returns, running = [0.0] * len(turn_rewards), 0.0
    for turn in range(len(turn_rewards) - 1, -1, -1):
        running = float(turn_rewards[turn]) + discount * running
        returns[turn] = running
    return returns


def turn_advantages(
    rewards: torch.Tensor, turn_rewards: Sequence[Sequence[float]], groups: torch.Tensor, estimator: str, *,
    credit: str = "trajectory", discount: float = 1.0,
) -> torch.Tensor:
    """Advantage of every turn of every trajectory. Shape (n, most turns), 0 past a trajectory's end.

    `rewards` (n,): each trajectory's total reward; `turn_rewards`: the reward after each turn.
    "trajectory": each turn gets the trajectory's group advantage of its total reward.
    "reward_to_go": turn t's return-to-go is compared with the returns-to-go at turn t of the other
    trajectories of its group that lasted that long (`estimator` over those cells), so an action is
    judged by its consequences only, against the same point of the same problem's other episodes
    (a per-step baseline; a turn no other episode reached carries no signal). A total that is not
    the sum of the turn rewards (a reward given for the whole episode) counts at the last turn.
    """
    if credit not in CREDIT_MODES:
        raise ValueError(f"credit must be one of {CREDIT_MODES}, got {credit!r}")
    num_rows = len(turn_rewards)
    if rewards.shape != (num_rows,) or groups.shape != (num_rows,):
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be ({num_rows},)")
    width = max((len(per_turn) for per_turn in turn_rewards), default=0)
    result = torch.zeros((num_rows, width), dtype=torch.float64)
    if num_rows == 0:
        return result
    if credit == "trajectory":
        per_row = compute_advantages(rewards.to(torch.float64), groups, estimator)
        for row, per_turn in enumerate(turn_rewards):
            result[row, : len(per_turn)] = per_row[row]
        return result
    rows, turns, returns, cells = [], [], [], []
    for row, per_turn in enumerate(turn_rewards):
        per_turn = [float(value) for value in per_turn]
        if per_turn:
            per_turn[-1] += float(rewards[row]) - sum(per_turn)
        for turn, value in enumerate(rewards_to_go(per_turn, discount)):
            rows.append(row)
            turns.append(turn)
            returns.append(value)
            cells.append(int(groups[row]) * width + turn)  # one cell per (group, turn)
    cell_index = group_index([str(cell) for cell in cells])
    flat = compute_advantages(torch.tensor(returns, dtype=torch.float64), cell_index, estimator)
    result[torch.tensor(rows), torch.tensor(turns)] = flat
    return result


def zero_signal_group_fraction(rewards: torch.Tensor, groups: torch.Tensor) -> float:
    """Fraction of groups whose rewards are all equal (a group of one included): no gradient."""
    if groups.numel() == 0:
        return 0.0
    num_groups = int(groups.max()) + 1
    highest = torch.full((num_groups,), -torch.inf, dtype=rewards.dtype).scatter_reduce(0, groups, rewards, "amax")
    lowest = torch.full((num_groups,), torch.inf, dtype=rewards.dtype).scatter_reduce(0, groups, rewards, "amin")
    return (highest == lowest).double().mean().item()
