"""Does vLLM run a model folder the way transformers does?

The trainer computes log-probs with transformers while the rollout engine samples with vLLM; the
importance weights between them are only meaningful if both engines compute the same function.
These helpers measure that on one token sequence: per-token log-probs and greedy continuations.
vLLM is imported only inside the functions that start or use an engine. On CPU the engine spawns
worker processes: a script that calls `start_vllm` or `check_model_agreement` needs
`if __name__ == "__main__":`.
"""

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dartflow.tasks.models.folders import require_model_folder

if TYPE_CHECKING:
    from vllm import LLM

DEFAULT_PROMPT = "What is 2+3?"
KV_CACHE_BYTES = 1 << 30  # 1 GiB: plenty for a few short sequences, and fits any test machine


@dataclass(frozen=True)
class AgreementReport:
    """transformers vs vLLM on one prompt: log-probs of a shared sequence and greedy outputs."""

    model_dir: str
    prompt_text: str
    prompt_token_ids: list[int]
    transformers_greedy_ids: list[int]
    vllm_greedy_ids: list[int]
    transformers_greedy_text: str
    vllm_greedy_text: str
    # Over prompt + transformers' greedy continuation, every position after the first.
    transformers_logprobs: list[float]
    vllm_logprobs: list[float]
    transformers_load_s: float
    vllm_load_s: float

    @property
    def max_abs_logprob_diff(self) -> float:
        return max(abs(a - b) for a, b in zip(self.transformers_logprobs, self.vllm_logprobs))

    @property
    def greedy_equal(self) -> bool:
        return self.transformers_greedy_ids == self.vllm_greedy_ids

    def agrees(self, logprob_tolerance: float) -> bool:
        return self.greedy_equal and self.max_abs_logprob_diff <= logprob_tolerance


# ---- transformers -------------------------------------------------------------------------


def load_transformers_policy(model_dir: str | os.PathLike) -> PreTrainedModel:
    """The folder's causal LM in float32, in eval mode."""
    path = require_model_folder(model_dir)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def policy_token_logprobs(model: PreTrainedModel, token_ids: Sequence[int]) -> list[float]:
    """log p(token_ids[t] | token_ids[:t]) for t = 1..n-1 (the first token has no prefix)."""
    check_token_ids(token_ids)
    input_ids = torch.tensor([list(token_ids)])  # (1, T)
    logits = model(input_ids=input_ids).logits.float()  # (1, T, V)
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V): predicts tokens 1..T-1
    return logprobs.gather(1, input_ids[0, 1:, None])[:, 0].tolist()


@torch.no_grad()
def policy_greedy(model: PreTrainedModel, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` (stops at the model's eos, which is kept)."""
    check_token_ids(prompt_ids)
    input_ids = torch.tensor([list(prompt_ids)])  # (1, T)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )
    return output[0, len(prompt_ids) :].tolist()


def transformers_token_logprobs(model_dir: str | os.PathLike, token_ids: Sequence[int]) -> list[float]:
    """Per-token log-probs of `token_ids` under transformers (float32); len(token_ids) - 1 values."""
    return policy_token_logprobs(load_transformers_policy(model_dir), token_ids)


def transformers_greedy(
    model_dir: str | os.PathLike, prompt_ids: Sequence[int], max_new_tokens: int = 32
) -> list[int]:
    """Greedy continuation token ids under transformers (float32)."""
    return policy_greedy(load_transformers_policy(model_dir), prompt_ids, max_new_tokens)


# ---- vLLM ---------------------------------------------------------------------------------


def start_vllm(
    model_dir: str | os.PathLike, *, max_model_len: int = 512, dtype: str = "float32", seed: int = 0
) -> "LLM":
    """A vLLM engine for the folder, sized for checks: eager, short context, 1 GiB KV cache.

    VLLM_CPU_KVCACHE_SPACE, when set, still wins over the 1 GiB (vLLM reads it on CPU).
    """
    from vllm import LLM

    path = require_model_folder(model_dir)
    return LLM(
        model=str(path),
        dtype=dtype,
        max_model_len=max_model_len,
        enforce_eager=True,  # compiling costs minutes on CPU and buys nothing for a check
        kv_cache_memory_bytes=KV_CACHE_BYTES,
        seed=seed,
    )


def shutdown_vllm(llm: "LLM") -> None:
    """Stop the engine's worker processes now instead of at garbage collection."""
    # vLLM 0.32's LLM has no shutdown(); its engine-core client does.
    llm.llm_engine.engine_core.shutdown()


@contextmanager
def vllm_engine(model_dir: str | os.PathLike, **engine_options) -> Iterator["LLM"]:
    """`start_vllm` for the length of a `with` block."""
    llm = start_vllm(model_dir, **engine_options)
    try:
        yield llm
    finally:
        shutdown_vllm(llm)


def vllm_token_logprobs(llm: "LLM", token_ids: Sequence[int]) -> list[float]:
    """Per-token log-probs of `token_ids` under vLLM's prompt log-probs; len(token_ids) - 1 values."""
    from vllm import SamplingParams, TokensPrompt

    check_token_ids(token_ids)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    (output,) = llm.generate(TokensPrompt(prompt_token_ids=list(token_ids)), params, use_tqdm=False)
    # prompt_logprobs[t] maps token ids to Logprob for position t; position 0 is None.
    return [
        output.prompt_logprobs[t][token_id].logprob for t, token_id in enumerate(token_ids) if t > 0
    ]


def vllm_greedy(llm: "LLM", prompt_ids: Sequence[int], max_new_tokens: int = 32) -> list[int]:
    """Greedy continuation token ids under vLLM (stops at the model's eos, which is kept)."""
    from vllm import SamplingParams, TokensPrompt

    check_token_ids(prompt_ids)
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    (output,) = llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params, use_tqdm=False)
    return list(output.outputs[0].token_ids)


# ---- both ---------------------------------------------------------------------------------


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt_text: str) -> list[int]:
    """`prompt_text` as one user turn in the tokenizer's chat template, ready for the answer."""
    messages = [{"role": "user", "content": prompt_text}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def check_model_agreement(
    model_dir: str | os.PathLike,
    prompt_text: str = DEFAULT_PROMPT,
    *,
    max_new_tokens: int = 32,
    max_model_len: int = 512,
) -> AgreementReport:
    """Run the chat-formatted prompt through transformers and a fresh vLLM engine; compare.

    Log-probs are compared on prompt + transformers' greedy answer, so the positions the model
    wrote itself are covered too. The engine is shut down before returning.
    """
    path = require_model_folder(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt_ids = chat_prompt_ids(tokenizer, prompt_text)
    if len(prompt_ids) + max_new_tokens > max_model_len:
        raise ValueError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_model_len ({max_model_len})"
        )

    started = time.perf_counter()
    model = load_transformers_policy(path)
    transformers_load_s = time.perf_counter() - started
    transformers_ids = policy_greedy(model, prompt_ids, max_new_tokens)
    sequence = prompt_ids + transformers_ids
    transformers_logprobs = policy_token_logprobs(model, sequence)
    del model  # a 135M float32 model is 0.5 GB; the engine is about to load its own copy

    started = time.perf_counter()
    with vllm_engine(path, max_model_len=max_model_len) as llm:
        vllm_load_s = time.perf_counter() - started
        vllm_ids = vllm_greedy(llm, prompt_ids, max_new_tokens)
        vllm_logprobs = vllm_token_logprobs(llm, sequence)

    return AgreementReport(
        model_dir=str(path),
        prompt_text=prompt_text,
        prompt_token_ids=prompt_ids,
        transformers_greedy_ids=transformers_ids,
        vllm_greedy_ids=vllm_ids,
        transformers_greedy_text=tokenizer.decode(transformers_ids, skip_special_tokens=True),
        vllm_greedy_text=tokenizer.decode(vllm_ids, skip_special_tokens=True),
        transformers_logprobs=transformers_logprobs,
        vllm_logprobs=vllm_logprobs,
        transformers_load_s=transformers_load_s,
        vllm_load_s=vllm_load_s,
    )


def check_token_ids(token_ids: Sequence[int]) -> None:
    """Raise if `token_ids` is empty or holds something other than non-negative ints."""
    if len(token_ids) == 0:
        raise ValueError("token_ids is empty")
    bad = [t for t in token_ids if int(t) != t or t < 0]
    if bad:
        raise ValueError(f"token ids must be non-negative ints, got {bad[:5]}")
