"""Number sense for the tiny policy: a short language-model pretraining on facts about integers.

A real LLM policy arrives knowing that 12 is higher than 7, what comes after 8 and which numbers
lie between 4 and 9; a randomly initialised tiny Llama knows none of it, and RL on a multi-turn
task cannot find in minutes what pretraining gives for free (its number tokens have no order).
This module gives the tiny model that prior, and only that: comparisons, counting, numbers above,
below and between bounds, and midpoints — generic facts, never a game's dialogue or strategy.

Each text is a few lines shaped like chat content: a statement or question on one line and the
number it asks for at the start of the next, so the answer is the same token (no leading space)
as an agent's reply that starts with a number.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

NUMBER_LOW, NUMBER_HIGH = 0, 100  # facts are drawn over this range


def _comparison(rng: random.Random, low: int, high: int) -> str:
    a, b = sorted(rng.sample(range(low, high + 1), 2))
    return rng.choice([f"{a} is lower than {b}.", f"{b} is higher than {a}."])


def _counting(rng: random.Random, low: int, high: int) -> str:
    length = rng.randint(3, 8)
    start = rng.randint(low, high - length + 1)
    numbers = list(range(start, start + length))
    if rng.random() < 0.5:
        return "Counting up:\n" + "\n".join(map(str, numbers))
    return "Counting down:\n" + "\n".join(map(str, reversed(numbers)))


def _above(rng: random.Random, low: int, high: int) -> str:
    bound = rng.randint(low, high - 1)
    return f"A number higher than {bound}:\n{rng.randint(bound + 1, high)}"


def _below(rng: random.Random, low: int, high: int) -> str:
    bound = rng.randint(low + 1, high)
    return f"A number lower than {bound}:\n{rng.randint(low, bound - 1)}"


def _between(rng: random.Random, low: int, high: int) -> str:
    a = rng.randint(low, high - 2)
    b = rng.randint(a + 2, high)
    return f"A number between {a} and {b}:\n{rng.randint(a + 1, b - 1)}"


def _midpoint(rng: random.Random, low: int, high: int) -> str:
    a = rng.randint(low, high - 2)
    b = rng.randint(a + 2, high)
    return f"Halfway between {a} and {b}:\n{(a + b) // 2}"


FACT_KINDS: tuple[Callable[[random.Random, int, int], str], ...] = (
    _comparison, _counting, _above, _below, _between, _midpoint,
)


def number_sense_texts(seed: int, count: int, low: int = NUMBER_LOW, high: int = NUMBER_HIGH) -> list[str]:
    """`count` texts, each 2-4 facts about integers in [low, high]. Pure: the same seed, the same texts."""
    if high - low < 8:
        raise ValueError(f"the number range [{low}, {high}] is too small for the facts (at least 9 integers)")
    rng = random.Random(seed)
    return ["\n".join(rng.choice(FACT_KINDS)(rng, low, high) for _ in range(rng.randint(2, 4))) for _ in range(count)]


def _batches(texts: list[str], batch_size: int, rng: random.Random) -> Iterator[list[str]]:
    while True:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [texts[i] for i in order[start : start + batch_size]]


def _right_padded(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, right-padded by hand: `tokenizer(..., padding=True)` would
    switch padding on in the tokenizer's saved state (its tokenizer.json would change)."""
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.int64)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def pretrain_number_sense(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 5e-3,
    low: int = NUMBER_LOW,
    high: int = NUMBER_HIGH,
    report: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place for `steps` next-token steps on number facts; returns each step's loss.

    AdamW with a linear decay to zero; padding is masked out of the loss. `report(step, loss)` is
    called every 50 steps and at the end (progress for the caller to show).
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    if steps == 0:
        return []
    texts = number_sense_texts(seed, max(4 * batch_size, steps * batch_size // 4), low, high)
    batches = _batches(texts, batch_size, random.Random(seed + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    losses = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(1, steps + 1):
            input_ids, attention_mask = _right_padded(tokenizer, next(batches))
            labels = input_ids.masked_fill(attention_mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if report is not None and (step % 50 == 0 or step == steps):
                report(step, loss.item())
    model.eval()
    return losses
