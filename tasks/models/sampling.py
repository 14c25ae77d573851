"""Sampling a response with transformers, keeping each sampled token's log-probability.

The rollout service samples with vLLM; this is the small, engine-free path used by the quickstart
demo and by tests that need real behaviour log-probs without starting an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel


@dataclass
class SampledResponse:
    token_ids: list[int]
    behavior_logprobs: list[float]  # log p(token | prefix) under the sampling distribution
    finished: bool  # ended on an end-of-sequence token rather than the token limit


@torch.no_grad()
def sample_response(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SampledResponse:
    """Sample up to `max_new_tokens` tokens; log-probs are of the temperature-scaled distribution."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long)  # (1, T)
    past = None
    token_ids: list[int] = []
    logprobs: list[float] = []
    stop = set(stop_token_ids)
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        step_logprobs = torch.log_softmax(out.logits[0, -1].float() / temperature, dim=-1)  # (V,)
        token = int(torch.multinomial(step_logprobs.exp(), 1, generator=generator))
        token_ids.append(token)
        logprobs.append(float(step_logprobs[token]))
        if token in stop:
            return SampledResponse(token_ids, logprobs, finished=True)
        input_ids = torch.tensor([[token]], dtype=torch.long)
    return SampledResponse(token_ids, logprobs, finished=False)
