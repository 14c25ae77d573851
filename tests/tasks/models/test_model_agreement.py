"""The transformers side of the engine comparison, and the report; no vLLM engine here."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartflow.tasks.models.agreement import (
    AgreementReport,
    chat_prompt_ids,
    check_model_agreement,
    transformers_greedy,
    transformers_token_logprobs,
)

SEQUENCE = [1, 264, 201, 423, 270, 297, 2, 201, 1, 269, 201, 9, 10, 11]


def test_token_logprobs_sum_to_the_sequence_log_likelihood(tiny_model_dir):
    logprobs = transformers_token_logprobs(tiny_model_dir, SEQUENCE)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    input_ids = torch.tensor([SEQUENCE])
    with torch.no_grad():
        mean_nll = model(input_ids=input_ids, labels=input_ids).loss.item()  # mean over tokens 1..n-1
    assert len(logprobs) == len(SEQUENCE) - 1
    assert all(value < 0 for value in logprobs)
    assert sum(logprobs) == pytest.approx(-mean_nll * (len(SEQUENCE) - 1), abs=1e-4)


def test_token_logprob_is_that_of_the_token_given_its_prefix(tiny_model_dir):
    logprobs = transformers_token_logprobs(tiny_model_dir, SEQUENCE)
    prefix_only = transformers_token_logprobs(tiny_model_dir, SEQUENCE[:4])
    assert logprobs[:3] == pytest.approx(prefix_only, abs=1e-5)  # causal: later tokens do not matter


def test_greedy_picks_the_most_likely_next_token(tiny_model_dir):
    greedy = transformers_greedy(tiny_model_dir, SEQUENCE, max_new_tokens=5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([SEQUENCE + greedy[:-1]])).logits[0]  # (T, V)
    assert greedy == logits[len(SEQUENCE) - 1 :].argmax(dim=-1).tolist()
    assert greedy == transformers_greedy(tiny_model_dir, SEQUENCE, max_new_tokens=5)


def test_chat_prompt_ends_ready_for_the_answer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = chat_prompt_ids(tokenizer, "What is 2+3?")
    assert tokenizer.decode(ids) == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("token_ids", [[], [1, -2], [1.5]])
def test_bad_token_ids_are_refused(tiny_model_dir, token_ids):
    with pytest.raises(ValueError, match="token"):
        transformers_token_logprobs(tiny_model_dir, token_ids)


def test_agreement_check_names_a_missing_model_before_starting_an_engine(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_agreement(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        check_model_agreement(tmp_path)


def make_report(transformers_ids, vllm_ids, transformers_logprobs, vllm_logprobs):
    return AgreementReport(
        model_dir="m", prompt_text="p", prompt_token_ids=[1],
        transformers_greedy_ids=transformers_ids, vllm_greedy_ids=vllm_ids,
        transformers_greedy_text="", vllm_greedy_text="",
        transformers_logprobs=transformers_logprobs, vllm_logprobs=vllm_logprobs,
        transformers_load_s=0.0, vllm_load_s=0.0,
    )


def test_report_measures_the_largest_logprob_gap():
    report = make_report([5, 6], [5, 6], [-1.0, -2.0, -3.0], [-1.0, -2.5, -2.9])
    assert report.max_abs_logprob_diff == pytest.approx(0.5)
    assert report.greedy_equal
    assert report.agrees(logprob_tolerance=0.6) and not report.agrees(logprob_tolerance=0.4)


def test_report_disagrees_when_greedy_outputs_differ():
    report = make_report([5, 6], [5, 7], [-1.0], [-1.0])
    assert not report.greedy_equal and not report.agrees(logprob_tolerance=1.0)
