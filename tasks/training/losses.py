"""Policy losses: decoupled PPO with truncated importance weights, KL to a reference, entropy, BC.

Decoupled PPO (Fu et al. 2025, AReaL, https://arxiv.org/abs/2505.24298; Hilton et al. 2022,
https://arxiv.org/abs/2110.00641) separates the two jobs of PPO's "old" policy:
- the *behaviour* policy b sampled the tokens (the rollout engine, possibly several versions stale
  and with other numerics): an importance weight w = pi_proximal / b corrects for it, truncated at C
  so one token far off-policy cannot dominate (truncated IS, Ionides 2008; Yao et al. 2025);
- the *proximal* policy p (the trainer's policy at the start of the step) anchors the trust region:
  ratio r = pi_theta / p is clipped to [1 - eps, 1 + eps].
Per token: -w * min(r A, clip(r) A), averaged over all agent tokens of the batch (token-level).

Shapes: every per-token tensor has one shape, e.g. (batch, tokens) or flat (tokens,); `mask` (same
shape, bool) selects the agent's tokens. `normalizer` is the number of agent tokens of the whole
batch, so that micro-batch losses summed under gradient accumulation give the batch's token mean;
it defaults to the mask's count. Metrics are token means over the mask (names ending in `_max`:
maxima), computed without gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor | None) -> Tensor:
    return values.sum() if mask is None else values.masked_fill(~mask, 0.0).sum()


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    return masked_sum(values, mask) / max(token_count(values, mask), 1)


def masked_max(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        values = values.masked_fill(~mask, -torch.inf)
    return values.max() if values.numel() else values.new_zeros(())


def token_count(values: Tensor, mask: Tensor | None) -> int:
    return values.numel() if mask is None else int(mask.sum())


def k3_kl(logprobs: Tensor, target_logprobs: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || target) on tokens sampled from pi: e^d - d - 1, d = target - pi.

    Non-negative, unbiased, low variance (Schulman, http://joschu.net/blog/kl-approx.html).
    """
    log_ratio = target_logprobs - logprobs
    return log_ratio.exp() - log_ratio - 1


def decoupled_ppo_loss(
    logprobs: Tensor,
    proximal_logprobs: Tensor,
    behavior_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    clip_eps: float,
    importance_weight_cap: float,
    reference_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    normalizer: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoupled PPO objective with truncated importance weights; returns (loss, metrics).

    logprobs: log pi_theta(token) with gradient; proximal_logprobs, behavior_logprobs,
    reference_logprobs: no gradient; advantages: the trajectory's advantage on each of its tokens;
    entropy: entropy of pi_theta at each token (with gradient when entropy_coef > 0);
    token_weights: each token's share of the loss (default 1; the loss is the weighted sum / normalizer).
    """
    ratio = (logprobs - proximal_logprobs).exp()
    clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    raw_importance_weight = (proximal_logprobs - behavior_logprobs).exp().detach()
    importance_weight = raw_importance_weight.clamp(max=importance_weight_cap)
    surrogate = torch.minimum(ratio * advantages, clipped_ratio * advantages)
    policy_term = -importance_weight * surrogate
    kl_term = kl_coef * k3_kl(logprobs, reference_logprobs) if reference_logprobs is not None else 0.0
    entropy_term = -entropy_coef * entropy if entropy is not None and entropy_coef else 0.0
    per_token_loss = policy_term + kl_term + entropy_term
    if token_weights is not None:
        per_token_loss = per_token_loss * token_weights

    count = token_count(logprobs, mask)
    normalizer = count if normalizer is None else normalizer
    loss = masked_sum(per_token_loss, mask) / max(normalizer, 1)

    with torch.no_grad():
        mean = lambda values: masked_mean(values, mask)  # noqa: E731
        metrics = {
            "policy_loss": mean(policy_term),
            "clip_frac": mean(((ratio - 1).abs() > clip_eps).float()),
            "approx_kl": mean(k3_kl(proximal_logprobs, logprobs)),
            "behavior_approx_kl": mean(k3_kl(behavior_logprobs, proximal_logprobs)),
            "is_weight_mean": mean(importance_weight),
            "is_weight_max": masked_max(importance_weight, mask),
            "is_truncated_frac": mean((raw_importance_weight > importance_weight_cap).float()),
            "advantage_mean": mean(advantages),
        }
        if entropy is not None:
            metrics["entropy"] = mean(entropy)
        if reference_logprobs is not None:
            metrics["kl_ref"] = mean(k3_kl(logprobs, reference_logprobs))
    return loss, metrics


def behaviour_cloning_loss(
    logprobs: Tensor, mask: Tensor | None = None, *, normalizer: int | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-level negative log-likelihood of the demonstrated agent tokens; returns (loss, metrics)."""
    negative_log_likelihood = -logprobs
    count = token_count(logprobs, mask)
    normalizer = count if normalizer is None else normalizer
    loss = masked_sum(negative_log_likelihood, mask) / max(normalizer, 1)
    with torch.no_grad():
        metrics = {"bc_nll": masked_mean(negative_log_likelihood, mask)}
    return loss, metrics
