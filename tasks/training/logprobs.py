"""The policy's log-probs (and entropy) at the agent tokens of a micro-batch.

Only agent tokens need a distribution, and prompts/observations are most of a multi-turn context:
the LM head runs on the hidden states of the predicting positions only, (N, H) -> (N, V), instead
of on every position, (B, T, H) -> (B, T, V). `head_matches_forward` checks once per model that
this equals the model's own logits (a model that scales or caps its logits gets the full path).

`temperature`: the engine samples from softmax(logits / T) and reports that distribution's log-probs
(vLLM `processed_logprobs`), so the trainer scores the same distribution: behaviour, proximal and
current log-probs and the entropy all come from logits / T. Behaviour cloning scores at T = 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from dartflow.tasks.training.batching import MicroBatch


def agent_token_logprobs(
    model: PreTrainedModel,
    micro_batch: MicroBatch,
    *,
    entropy: bool = False,
    entropy_grad: bool = False,
    full_logits: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """log pi_T(token | prefix) of each agent token, and the entropy of pi_T there, where
    pi_T = softmax(logits / temperature). Shapes (N,), (N,).

    Tokens are ordered as `micro_batch.loss_mask.nonzero()` (row-major), like `x[loss_mask]`.
    The entropy is computed without gradient unless `entropy_grad`.
    """
    rows, cols = micro_batch.loss_mask.nonzero(as_tuple=True)  # (N,), (N,)
    targets = micro_batch.input_ids[rows, cols]  # (N,)
    if full_logits:
        logits = model(input_ids=micro_batch.input_ids, use_cache=False).logits[rows, cols - 1]  # (N, V)
    else:
        hidden = model.get_decoder()(input_ids=micro_batch.input_ids, use_cache=False).last_hidden_state  # (B, T, H)
        logits = model.get_output_embeddings()(hidden[rows, cols - 1])  # (N, V)
    logits = tempered_logits(logits, temperature)  # (N, V)
    logprobs = -F.cross_entropy(logits, targets, reduction="none")  # (N,)
    if not entropy:
        return logprobs, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        token_entropy = distribution_entropy(logits if entropy_grad else logits.detach())  # (N,)
    return logprobs, token_entropy


def tempered_logits(logits: Tensor, temperature: float) -> Tensor:
    """The logits of the distribution sampled at `temperature`: float32 logits / T. (..., V) -> (..., V)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 to score tokens (0 is greedy: no distribution), got {temperature}")
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def distribution_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: logsumexp(z) - sum softmax(z) z. (..., V) -> (...)."""
    log_normalizer = logits.logsumexp(-1)
    return log_normalizer - (logits.softmax(-1) * logits).sum(-1)


@torch.no_grad()
def head_matches_forward(model: PreTrainedModel, vocab_size: int | None = None, tolerance: float = 1e-4) -> bool:
    """Whether output_embeddings(decoder(x)) gives the model's own logits (on a short input)."""
    if model.get_decoder() is None or model.get_output_embeddings() is None:
        return False
    vocab_size = vocab_size or model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (1, 8), generator=generator)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    reference = model(input_ids=input_ids, use_cache=False).logits.float()
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden).float()
    return bool((logits - reference).abs().max() <= tolerance * max(1.0, reference.abs().max().item()))
