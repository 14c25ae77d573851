"""One optimizer step: micro-batches with gradient accumulation, clipping, AdamW, skip if non-finite.

Reads top to bottom like the paper's update:
1. proximal log-probs: the policy at the start of the step, no gradient;
2. for each micro-batch: current log-probs, loss (weighted token sum / the whole batch's total
   token weight: its token count under token_mean), backward;
3. clip the gradient norm; if the loss or the gradient is not finite, drop the gradient and leave
   weights and optimizer state untouched (the step is reported as skipped, never a NaN model);
4. AdamW step at the scheduled learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel

from dartflow.tasks.training.batching import MicroBatch
from dartflow.tasks.training.logprobs import agent_token_logprobs
from dartflow.tasks.training.losses import decoupled_ppo_loss
from dartflow.tasks.training.settings import TrainerSettings

MicroBatchLoss = Callable[[int, MicroBatch, float], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class StepOutcome:
    applied: bool  # False: the weights and optimizer state were left untouched
    metrics: dict[str, float]  # names without the `train/` prefix
    skip_reason: str | None = None


@dataclass
class MetricAccumulator:
    """Token-weighted means over micro-batches; names ending in `_max` keep the maximum."""

    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    maxima: dict[str, float] = field(default_factory=dict)

    def add(self, metrics: dict[str, Tensor], weight: int) -> None:
        for name, value in metrics.items():
            value = float(value)
            if name.endswith("_max"):
                self.maxima[name] = max(self.maxima.get(name, -math.inf), value)
            elif weight > 0:
                self.sums[name] = self.sums.get(name, 0.0) + value * weight
                self.weights[name] = self.weights.get(name, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {**{name: self.sums[name] / self.weights[name] for name in self.sums}, **self.maxima}


def accumulate_gradients(
    micro_batches: list[MicroBatch], micro_batch_loss: MicroBatchLoss
) -> tuple[float, dict[str, float]]:
    """Backward of every micro-batch's loss; returns (batch loss, metrics). Stops at a non-finite loss."""
    total_weight = sum(float(mb.token_weights.sum()) for mb in micro_batches)  # token count under token_mean
    batch_loss, accumulated = 0.0, MetricAccumulator()
    for index, micro_batch in enumerate(micro_batches):
        loss, metrics = micro_batch_loss(index, micro_batch, total_weight)
        if not torch.isfinite(loss):
            return math.nan, accumulated.result()  # no backward: nothing of it may reach the weights
        loss.backward()
        batch_loss += loss.item()
        accumulated.add(metrics, micro_batch.num_loss_tokens)
    return batch_loss, accumulated.result()


def apply_update(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, lr: float, max_grad_norm: float, batch_loss: float
) -> tuple[bool, float, str | None]:
    """Clip and step, unless the loss or the gradient norm is not finite; returns (applied, norm, why not)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not math.isfinite(batch_loss):
        optimizer.zero_grad(set_to_none=True)
        return False, math.nan, "non-finite loss"
    if all(p.grad is None for p in parameters):
        return False, 0.0, "no agent tokens"
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm))  # norm before clipping
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return False, grad_norm, "non-finite gradient"
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True, grad_norm, None


@torch.no_grad()
def proximal_logprobs(
    model: PreTrainedModel, micro_batches: list[MicroBatch], *, full_logits: bool, temperature: float = 1.0
) -> list[Tensor]:
    """Log-probs of the agent tokens under the policy as it is now (a separate no-grad pass), at the
    rollout's sampling temperature. (N_i,) each."""
    return [
        agent_token_logprobs(model, mb, full_logits=full_logits, temperature=temperature)[0] for mb in micro_batches
    ]


@torch.no_grad()
def proximal_logprobs_and_entropy(
    model: PreTrainedModel, micro_batches: list[MicroBatch], *, full_logits: bool, temperature: float = 1.0
) -> tuple[list[Tensor], list[Tensor]]:
    """`proximal_logprobs` and the entropy of the policy at the same tokens, from the same logits
    (the high-entropy step selection's input: the entropy of the distribution sampled). (N_i,) each."""
    results = [
        agent_token_logprobs(model, mb, entropy=True, full_logits=full_logits, temperature=temperature)
        for mb in micro_batches
    ]
    return [logprobs for logprobs, _ in results], [entropy for _, entropy in results]


def policy_gradient_step(
    policy: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[MicroBatch],
    settings: TrainerSettings,
    *,
    lr: float,
    reference: PreTrainedModel | None = None,
    full_logits: bool = False,
    proximal: list[Tensor] | None = None,
) -> StepOutcome:
    """One decoupled-PPO update of `policy` on the batch `micro_batches` (see losses.py).

    `proximal`: the agent-token log-probs of the policy the batch's updates started from, one
    tensor per micro-batch (`proximal_logprobs`); needed when this is not the batch's first update.
    """
    # On a batch's first update every forward below runs on the start-of-step weights, so the
    # detached current log-probs *are* the proximal ones ("reuse"); "recompute" checks that.
    recomputed = proximal
    if recomputed is None and settings.proximal_logprobs == "recompute":
        recomputed = proximal_logprobs(policy, micro_batches, full_logits=full_logits, temperature=settings.temperature)

    def micro_batch_loss(index: int, mb: MicroBatch, total_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
        # At the rollout's temperature: the behaviour log-probs are of softmax(logits / T), and the
        # importance ratios and the KL are only unbiased between distributions of the same T.
        logprobs, entropy = agent_token_logprobs(
            policy, mb, entropy=True, entropy_grad=settings.entropy_coef > 0, full_logits=full_logits,
            temperature=settings.temperature,
        )  # (N,), (N,)
        reference_logprobs = None
        if reference is not None and settings.kl_coef > 0:
            with torch.no_grad():
                reference_logprobs = agent_token_logprobs(
                    reference, mb, full_logits=full_logits, temperature=settings.temperature
                )[0]
        return decoupled_ppo_loss(
            logprobs,
            recomputed[index] if recomputed is not None else logprobs.detach(),
            mb.behavior_logprobs[mb.loss_mask],
            mb.advantages[mb.loss_mask],
            clip_eps=settings.clip_eps,
            importance_weight_cap=settings.importance_weight_cap,
            reference_logprobs=reference_logprobs,
            kl_coef=settings.kl_coef,
            entropy=entropy,
            entropy_coef=settings.entropy_coef,
            normalizer=total_weight,
            token_weights=mb.token_weights[mb.loss_mask],
        )

    optimizer.zero_grad(set_to_none=True)
    batch_loss, metrics = accumulate_gradients(micro_batches, micro_batch_loss)
    applied, grad_norm, reason = apply_update(
        policy, optimizer, lr=lr, max_grad_norm=settings.max_grad_norm, batch_loss=batch_loss
    )
    return StepOutcome(applied, {"loss": batch_loss, "grad_norm": grad_norm, **metrics}, reason)
