"""Number-sense pretraining: every fact in the texts is true, and pretraining teaches the model one."""

import re

import pytest
import torch

from dartflow.tasks.models.number_sense import number_sense_texts, pretrain_number_sense
from dartflow.tasks.models.tiny import TinyModelSpec, init_tiny_llama, train_tokenizer, write_tiny_model


def check_fact_lines(lines: list[str], low: int, high: int) -> int:
    """Assert every fact of one text; returns how many facts were checked."""
    checked, i = 0, 0
    while i < len(lines):
        line = lines[i]
        if m := re.fullmatch(r"(\d+) is (lower|higher) than (\d+)\.", line):
            a, relation, b = int(m[1]), m[2], int(m[3])
            assert (a < b) if relation == "lower" else (a > b), line
            i += 1
        elif line in ("Counting up:", "Counting down:"):
            numbers = []
            i += 1
            while i < len(lines) and re.fullmatch(r"\d+", lines[i]):
                numbers.append(int(lines[i]))
                i += 1
            step = 1 if line == "Counting up:" else -1
            assert len(numbers) >= 3 and all(b - a == step for a, b in zip(numbers, numbers[1:])), numbers
        else:
            answer = int(lines[i + 1])
            if m := re.fullmatch(r"A number higher than (\d+):", line):
                assert int(m[1]) < answer <= high
            elif m := re.fullmatch(r"A number lower than (\d+):", line):
                assert low <= answer < int(m[1])
            elif m := re.fullmatch(r"A number between (\d+) and (\d+):", line):
                assert int(m[1]) < answer < int(m[2])
            elif m := re.fullmatch(r"Halfway between (\d+) and (\d+):", line):
                assert answer == (int(m[1]) + int(m[2])) // 2
            else:
                raise AssertionError(f"unknown fact line {line!r}")
            i += 2
        checked += 1
    return checked


def test_every_fact_is_true_and_the_texts_are_a_function_of_the_seed():
    texts = number_sense_texts(seed=3, count=400, low=0, high=40)
    assert texts == number_sense_texts(seed=3, count=400, low=0, high=40)
    assert texts != number_sense_texts(seed=4, count=400, low=0, high=40)
    facts = sum(check_fact_lines(text.split("\n"), 0, 40) for text in texts)
    assert 2 * len(texts) <= facts <= 4 * len(texts)
    assert all(0 <= int(n) <= 40 for text in texts for n in re.findall(r"\d+", text))


def test_a_range_too_small_for_the_facts_is_refused():
    with pytest.raises(ValueError, match="too small"):
        number_sense_texts(seed=0, count=1, low=0, high=5)


def higher_than_mass(model, tokenizer, bound: int, high: int) -> float:
    """Share of the next-number probability (over 0..high) that lies above `bound`."""
    ids = tokenizer(f"A number higher than {bound}:\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = model(ids).logits[0, -1].softmax(-1)
    numbers = {n: tokenizer.convert_tokens_to_ids(str(n)) for n in range(high + 1)}
    total = sum(float(probs[i]) for i in numbers.values())
    return sum(float(probs[numbers[n]]) for n in numbers if n > bound) / total


def test_pretraining_lowers_the_loss_and_teaches_which_numbers_are_higher():
    spec = TinyModelSpec(seed=0)
    tokenizer = train_tokenizer(spec.vocab_size)
    model = init_tiny_llama(spec, tokenizer)
    bounds, high = (3, 6, 9), 12
    uniform = sum((high - bound) / (high + 1) for bound in bounds) / len(bounds)  # 0.46
    before = sum(higher_than_mass(model, tokenizer, bound, high) for bound in bounds) / len(bounds)
    losses = pretrain_number_sense(model, tokenizer, steps=100, seed=0, high=high, batch_size=32)
    assert len(losses) == 100 and sum(losses[-10:]) < 0.6 * sum(losses[:10])
    after = sum(higher_than_mass(model, tokenizer, bound, high) for bound in bounds) / len(bounds)
    assert abs(before - uniform) < 0.1 and after > uniform + 0.1, (uniform, before, after)


def test_a_spec_with_number_sense_steps_builds_a_pretrained_model(tiny_model_dir, tmp_path):
    reported = []
    folder = write_tiny_model(
        tmp_path / "pretrained", TinyModelSpec(seed=0, number_sense_steps=3, number_sense_high=20),
        report=lambda step, loss: reported.append(step),
    )
    assert reported == [3]
    assert (folder / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert (folder / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    with pytest.raises(ValueError, match="number_sense"):
        TinyModelSpec(number_sense_steps=-1)
