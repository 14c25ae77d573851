"""A deterministic text corpus shaped like the built-in environments' dialogues.

The tiny policy's tokenizer is trained on it, so the pieces the agent reads and writes most
(numbers, "higher"/"lower", arithmetic operators, chat role words) become single tokens.
Pure: the same seed always gives the same list of texts.
"""

import random

ROLE_WORDS = ("system", "user", "assistant")

GUESS_SYSTEM_PROMPTS = (
    "You are playing a number guessing game.",
    "You are a careful player of a guessing game. Answer with a number only.",
    "Find the secret number in as few guesses as possible.",
)
GUESS_OPENINGS = (
    "Guess a number between {low} and {high}.",
    "I am thinking of a number between {low} and {high}. What is your guess?",
    "Pick a number from {low} to {high}.",
)
GUESS_ANSWERS = (
    "{guess}",
    "My guess is {guess}.",
    "I guess {guess}.",
    "Is it {guess}?",
)
ARITHMETIC_SYSTEM_PROMPTS = (
    "You are a helpful assistant that solves arithmetic problems.",
    "Solve the problem. Give the final answer as an integer.",
)
ARITHMETIC_QUESTIONS = (
    "{expression} = ?",
    "What is {expression}?",
    "Compute {expression}.",
    "Calculate: {expression}",
)
ARITHMETIC_ANSWERS = (
    "{value}",
    "The answer is {value}.",
    "{expression} = {value}",
)


def build_corpus(seed: int = 0, num_dialogues: int = 4000) -> list[str]:
    """Return `num_dialogues` texts: guess_number games and arithmetic problems, half each.

    Each text is one dialogue written as role lines ("user\\nGuess a number ...\\n"), without
    the chat markers: those are special tokens and must not be learned as byte pieces.
    """
    if num_dialogues < 1:
        raise ValueError(f"num_dialogues must be at least 1, got {num_dialogues}")
    rng = random.Random(seed)
    texts = []
    for index in range(num_dialogues):
        turns = guess_number_dialogue(rng) if index % 2 == 0 else arithmetic_dialogue(rng)
        texts.append("".join(f"{role}\n{content}\n" for role, content in turns))
    return texts


def guess_number_dialogue(rng: random.Random) -> list[tuple[str, str]]:
    """One binary-search game of guess_number, as (role, content) turns."""
    low, high = 1, rng.choice((10, 20, 50, 100, 100, 100, 1000))
    secret = rng.randint(low, high)
    turns = [
        ("system", rng.choice(GUESS_SYSTEM_PROMPTS)),
        ("user", rng.choice(GUESS_OPENINGS).format(low=low, high=high)),
    ]
    lo, hi = low, high
    for _ in range(12):
        # A slightly noisy bisection, so every number shows up as a guess, not only midpoints.
        guess = min(hi, max(lo, (lo + hi) // 2 + rng.randint(-2, 2)))
        turns.append(("assistant", rng.choice(GUESS_ANSWERS).format(guess=guess)))
        if guess == secret:
            turns.append(("user", rng.choice(("correct", "Correct!", "correct, you win."))))
            break
        if guess < secret:
            lo = guess + 1
            turns.append(("user", rng.choice(("higher", "Higher.", "higher than " + str(guess)))))
        else:
            hi = guess - 1
            turns.append(("user", rng.choice(("lower", "Lower.", "lower than " + str(guess)))))
    return turns


def arithmetic_dialogue(rng: random.Random) -> list[tuple[str, str]]:
    """One single-turn arithmetic problem and its answer, as (role, content) turns."""
    expression = random_expression(rng, depth=rng.randint(1, 3))
    value = eval(expression)  # built here from digits, operators and parentheses only
    return [
        ("system", rng.choice(ARITHMETIC_SYSTEM_PROMPTS)),
        ("user", rng.choice(ARITHMETIC_QUESTIONS).format(expression=expression)),
        ("assistant", rng.choice(ARITHMETIC_ANSWERS).format(expression=expression, value=value)),
    ]


def random_expression(rng: random.Random, depth: int) -> str:
    """An integer expression with +, - and *; compound operands are parenthesised."""
    if depth == 0:
        return str(rng.randint(0, rng.choice((9, 20, 100, 999))))
    operands = [random_expression(rng, depth - 1), random_expression(rng, rng.randint(0, depth - 1))]
    left, right = (f"({operand})" if " " in operand else operand for operand in operands)
    return f"{left} {rng.choice(('+', '-', '*'))} {right}"
