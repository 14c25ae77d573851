"""What one generation request is and what it returns: plain data and pure rules, no engine.

Log-prob semantics (the trainer's importance weights depend on them):
- `behavior_logprobs[i]` is log p(token_ids[i] | prompt, token_ids[:i]) under the distribution the
  engine sampled token i from. With `logprobs_source="processed"` (the default) that is the model's
  softmax after temperature and top-p (renormalised over the nucleus): the distribution actually
  sampled. With `"raw"` it is the model's own softmax at temperature 1, whatever the settings.
  At temperature 1 and top_p 1 the two are equal. For greedy requests (temperature 0) vLLM gives
  the temperature-1 softmax in both modes.
- Prompt scoring (`RolloutEngine.sequence_logprobs`) is always the model's temperature-1 softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]
LogprobsSource = Literal["processed", "raw"]
InFlightOnSwap = Literal["finish", "requeue"]
# Our names -> vLLM's `logprobs_mode`.
VLLM_LOGPROBS_MODE = {"processed": "processed_logprobs", "raw": "raw_logprobs"}


@dataclass(frozen=True)
class SamplingSettings:
    """How one turn is sampled. temperature 0 is greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None  # per-request seed: same prompt + seed + weights -> same tokens

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 5:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class Generation:
    """One sampled response: tokens, their behaviour log-probs and the policy version of each."""

    token_ids: list[int]
    behavior_logprobs: list[float]
    token_policy_versions: list[int]  # version of the weights that sampled each token
    finish_reason: FinishReason  # "stop": a stop/eos token (kept, last); "length": token budget
    num_prompt_tokens: int
    min_policy_version: int  # over the tokens; the version at submission when there are none
    max_policy_version: int
    queued_s: float  # submission -> first token (includes waiting behind a weight swap)
    duration_s: float  # submission -> last token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def spans_versions(self) -> bool:
        """True when a weight swap happened while this response was being sampled."""
        return self.min_policy_version != self.max_policy_version


class PromptTooLong(ValueError):
    """The prompt leaves no room for one new token: the episode ends as `truncated`."""

    def __init__(self, num_prompt_tokens: int, limit: int, limit_name: str):
        self.num_prompt_tokens = num_prompt_tokens
        self.limit = limit
        super().__init__(
            f"prompt of {num_prompt_tokens} tokens does not fit {limit_name}={limit} "
            "with room for one new token"
        )


class GenerationInterrupted(RuntimeError):
    """The engine aborted this request (a weight swap with in_flight_on_swap='requeue', or an abort).

    `partial` holds what was sampled before the abort (finish_reason "abort"); the episode loop
    drops it and samples the turn again under the new weights.
    """

    def __init__(self, partial: Generation):
        self.partial = partial
        super().__init__(
            f"generation interrupted after {partial.num_tokens} tokens "
            f"(policy version {partial.max_policy_version}): requeue the turn"
        )


def turn_token_budget(
    num_prompt_tokens: int, max_new_tokens: int, *, max_context_tokens: int, max_model_len: int
) -> int:
    """New tokens one turn may sample: `max_new_tokens`, cut to what the context still holds.

    Raises PromptTooLong when the prompt exceeds `max_context_tokens` or leaves no room for a
    single token in `max_model_len` (the engine would reject it).
    """
    if num_prompt_tokens < 1:
        raise ValueError("prompt_token_ids is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_prompt_tokens > max_context_tokens:
        raise PromptTooLong(num_prompt_tokens, max_context_tokens, "max_context_tokens")
    if num_prompt_tokens + 1 > max_model_len:
        raise PromptTooLong(num_prompt_tokens, max_model_len, "max_model_len")
    return min(max_new_tokens, max_model_len - num_prompt_tokens)


def token_versions_from_spans(
    spans: Sequence[tuple[str, int, int]] | None, num_tokens: int, fallback_version: int
) -> list[int]:
    """Per-token policy versions from vLLM's weight-version spans `(label, start, end)`.

    Our labels are `str(policy_version)`. Tokens no span covers (vLLM reports none when no label
    was ever set) get `fallback_version`.
    """
    versions = [fallback_version] * num_tokens
    for label, start, end in spans or ():
        version = int(label)
        for index in range(max(start, 0), min(end, num_tokens)):
            versions[index] = version
    return versions


def sampled_logprobs(position_logprobs: Sequence, token_ids: Sequence[int]) -> list[float]:
    """The sampled token's log-prob at each position of vLLM's `logprobs` (asked with logprobs=0)."""
    if len(position_logprobs) != len(token_ids):
        raise ValueError(f"{len(position_logprobs)} log-prob positions for {len(token_ids)} tokens")
    return [position[token_id].logprob for position, token_id in zip(position_logprobs, token_ids)]


def normalize_finish_reason(vllm_reason: str | None) -> FinishReason:
    """vLLM's finish reason as ours; anything but stop/length (abort, error, ...) is an abort."""
    if vllm_reason in ("stop", "length"):
        return vllm_reason
    return "abort"


def build_generation(
    *,
    token_ids: list[int],
    behavior_logprobs: list[float],
    version_spans: Sequence[tuple[str, int, int]] | None,
    finish_reason: FinishReason,
    num_prompt_tokens: int,
    submitted_version: int,
    submitted_at: float,
    first_token_at: float | None,
    finished_at: float,
) -> Generation:
    """Assemble a Generation from what one request streamed (times from `time.perf_counter`)."""
    versions = token_versions_from_spans(version_spans, len(token_ids), submitted_version)
    return Generation(
        token_ids=token_ids,
        behavior_logprobs=behavior_logprobs,
        token_policy_versions=versions,
        finish_reason=finish_reason,
        num_prompt_tokens=num_prompt_tokens,
        min_policy_version=min(versions, default=submitted_version),
        max_policy_version=max(versions, default=submitted_version),
        queued_s=(first_token_at if first_token_at is not None else finished_at) - submitted_at,
        duration_s=finished_at - submitted_at,
    )
