"""Decoupled PPO with truncated importance weights, KL, entropy and BC, against hand computations."""

import math

import pytest
import torch

from dartflow.tasks.training.logprobs import distribution_entropy
from dartflow.tasks.training.losses import behaviour_cloning_loss, decoupled_ppo_loss, k3_kl

CAP = 5.0


def ppo(logprobs, proximal, behavior, advantages, mask=None, **options):
    options = {"clip_eps": 0.2, "importance_weight_cap": CAP, **options}
    return decoupled_ppo_loss(logprobs, proximal, behavior, advantages, mask, **options)


def test_fresh_tokens_have_weight_one_and_the_loss_is_minus_the_mean_advantage():
    logprobs = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, 2.0])
    loss, metrics = ppo(logprobs, logprobs.detach(), logprobs.detach(), advantages)
    loss.backward()
    assert loss.item() == pytest.approx(-(1 - 1 + 2) / 3)
    assert logprobs.grad.tolist() == pytest.approx([-1 / 3, 1 / 3, -2 / 3])  # d(-r A)/d logprob = -A/N
    assert metrics["is_weight_mean"].item() == pytest.approx(1.0)
    assert metrics["is_truncated_frac"].item() == 0.0 and metrics["clip_frac"].item() == 0.0


def test_batch_mixing_fresh_and_stale_tokens_weights_each_by_its_truncated_importance_weight():
    # proximal -1 everywhere; behaviour: fresh (-1), 1 version stale (-2), very stale (-5), and one
    # the engine found likelier than the trainer does (-0.5).
    proximal = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    behavior = torch.tensor([-1.0, -2.0, -5.0, -0.5])
    advantages = torch.tensor([1.0, 1.0, -1.0, 2.0])
    logprobs = proximal.clone().requires_grad_(True)
    loss, metrics = ppo(logprobs, proximal, behavior, advantages)
    loss.backward()

    weights = [1.0, math.e, CAP, math.exp(-0.5)]  # exp(4) = 54.6 is truncated to the cap
    assert loss.item() == pytest.approx(-sum(w * a for w, a in zip(weights, [1, 1, -1, 2])) / 4, abs=1e-6)
    assert logprobs.grad.tolist() == pytest.approx([-w * a / 4 for w, a in zip(weights, [1, 1, -1, 2])], rel=1e-6)
    assert metrics["is_weight_mean"].item() == pytest.approx(sum(weights) / 4, rel=1e-6)
    assert metrics["is_weight_max"].item() == pytest.approx(CAP)
    assert metrics["is_truncated_frac"].item() == pytest.approx(0.25)


def test_truncated_weight_caps_a_stale_token_and_leaves_the_others_unchanged():
    proximal = torch.tensor([-1.0, -1.0])
    advantages = torch.tensor([1.0, 1.0])
    grads = []
    for stale_behavior in (-20.0, -50.0):  # exp(19) and exp(49): both far above the cap
        logprobs = proximal.clone().requires_grad_(True)
        loss, _ = ppo(logprobs, proximal, torch.tensor([-1.0, stale_behavior]), advantages)
        loss.backward()
        grads.append(logprobs.grad.tolist())
    assert grads[0] == grads[1] == pytest.approx([-0.5, -CAP / 2])


def test_clipped_ratio_stops_the_gradient_only_where_the_surrogate_chose_it():
    proximal = torch.tensor([-1.0, -1.0, -1.0])
    logprobs = (proximal + torch.tensor([math.log(1.5), math.log(1.5), 0.0])).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 1.0])
    loss, metrics = ppo(logprobs, proximal, proximal, advantages)
    loss.backward()
    # token 0: min(1.5, 1.2) -> clipped constant, no gradient; token 1: min(-1.5, -1.2) = -1.5 ->
    # gradient of -r A = r = 1.5; token 2: ratio 1 -> -A.
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 1.0) / 3, rel=1e-6)
    assert logprobs.grad.tolist() == pytest.approx([0.0, 1.5 / 3, -1 / 3], rel=1e-6, abs=1e-7)
    assert metrics["clip_frac"].item() == pytest.approx(2 / 3)
    assert metrics["approx_kl"].item() == pytest.approx(2 * (0.5 - math.log(1.5)) / 3, rel=1e-5)


def test_token_level_averaging_counts_tokens_not_sequences_and_ignores_masked_ones():
    logprobs = torch.full((2, 3), -1.0, requires_grad=True)
    behavior = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -99.0, -99.0]])  # masked garbage
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 7.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, metrics = ppo(logprobs, logprobs.detach(), behavior, advantages, mask)
    loss.backward()
    assert loss.item() == pytest.approx(-(1 + 1 + 1 - 1) / 4)  # a sequence mean would give 0
    assert logprobs.grad[1, 1:].tolist() == [0.0, 0.0]
    assert metrics["is_weight_max"].item() == pytest.approx(1.0)


def test_normalizer_divides_by_the_tokens_of_the_whole_batch():
    logprobs = torch.tensor([-1.0, -1.0])
    loss, _ = ppo(logprobs, logprobs, logprobs, torch.tensor([1.0, 1.0]), normalizer=8)
    assert loss.item() == pytest.approx(-2 / 8)


def test_trajectory_weights_make_a_group_of_unequal_lengths_sum_to_zero():
    # A success (advantage +1, 1 token) and a failure (advantage -1, 3 tokens), fresh tokens.
    logprobs = torch.full((4,), -1.0, requires_grad=True)
    advantages = torch.tensor([1.0, -1.0, -1.0, -1.0])
    token_mean, _ = ppo(logprobs, logprobs.detach(), logprobs.detach(), advantages)
    assert token_mean.item() == pytest.approx(-(1 - 3) / 4)  # the failure's tokens outvote the success
    weights = torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3])
    loss, _ = ppo(logprobs, logprobs.detach(), logprobs.detach(), advantages, token_weights=weights, normalizer=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert logprobs.grad.tolist() == pytest.approx([-1 / 2, 1 / 6, 1 / 6, 1 / 6])  # -A * w / 2


def test_k3_kl_matches_its_formula_and_is_zero_at_equality():
    # d = reference - logprob = -1: e^-1 + 1 - 1
    assert k3_kl(torch.tensor(-1.0), torch.tensor(-2.0)).item() == pytest.approx(math.exp(-1))
    assert k3_kl(torch.tensor(-1.3), torch.tensor(-1.3)).item() == 0.0


def test_kl_penalty_and_entropy_bonus_are_added_per_token():
    logprobs = torch.tensor([-1.0, -1.0])
    reference = torch.tensor([-2.0, -1.0])
    entropy = torch.tensor([2.0, 4.0])
    advantages = torch.zeros(2)
    loss, metrics = ppo(
        logprobs, logprobs, logprobs, advantages,
        reference_logprobs=reference, kl_coef=0.5, entropy=entropy, entropy_coef=0.1,
    )
    assert loss.item() == pytest.approx((0.5 * math.exp(-1) - 0.1 * 6) / 2, rel=1e-6)
    assert metrics["kl_ref"].item() == pytest.approx(math.exp(-1) / 2)
    assert metrics["entropy"].item() == pytest.approx(3.0)


def test_behaviour_cloning_loss_is_the_token_mean_negative_log_likelihood():
    logprobs = torch.tensor([[-1.0, -3.0], [-2.0, -50.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, metrics = behaviour_cloning_loss(logprobs, mask)
    assert loss.item() == pytest.approx(2.0) and metrics["bc_nll"].item() == pytest.approx(2.0)


def test_distribution_entropy_of_known_distributions():
    assert distribution_entropy(torch.zeros(8)).item() == pytest.approx(math.log(8))
    p = torch.tensor([0.25, 0.75])
    assert distribution_entropy(p.log()).item() == pytest.approx(-(p * p.log()).sum().item())
