"""arithmetic: evaluate one integer expression such as `(12 + 7) * 3 - 45`. Single turn.

Expressions are random binary trees over `+`, `-`, `*` with non-negative integer operands, printed
with the usual precedence and only the parentheses it needs. The answer is checked by exact match
after `parse_integer` (whitespace around it and one trailing period tolerated, nothing else).
Reward 1 for the exact value, 0 otherwise (wrong or unparseable).

Problems: difficulty = number of operands. The split of a problem is a fixed function of its
expression text, so train and held-out never share an expression. Ids: `arithmetic/<split>/<index>`
(with `@<fingerprint>` after the name under non-default params).
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, Field, model_validator

from dartflow.tasks.envs.parsing import MAX_INTEGER_DIGITS, excerpt, parse_integer
from dartflow.tasks.envs.problems import (
    EnvironmentConfigError,
    IndexedProblemSource,
    check_params,
    problem_id_prefix,
    split_of,
    stable_seed,
)
from dartflow.tasks.envs.protocol import Problem, StepResult

NAME = "arithmetic"
Operator = Literal["+", "-", "*"]
Expression = Union[int, tuple[str, "Expression", "Expression"]]  # a leaf, or (operator, left, right)

PRECEDENCE = {"+": 1, "-": 1, "*": 2}
# Draws allowed per problem before a split counts as empty (a tiny expression space, e.g. `1 + 1`).
MAX_DRAWS = 1_000


class ArithmeticParams(BaseModel, extra="forbid"):
    min_operands: int = Field(2, ge=2, le=16, description="Fewest operands in an expression.")
    max_operands: int = Field(4, ge=2, le=16, description="Most operands in an expression.")
    max_value: int = Field(100, ge=1, le=10**6, description="Operands are drawn from [0, max_value].")
    operators: list[Operator] = Field(["+", "-", "*"], min_length=1, description="Operators to use.")
    train_size: int = Field(100_000, ge=1, le=10**9, description="Problems in the train split.")
    heldout_size: int = Field(500, ge=1, le=10**6, description="Problems in the held-out split.")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of expressions that are held out.")
    seed: int = Field(0, ge=0, description="Seed of problem generation.")

    @model_validator(mode="after")
    def _answers_fit_the_format(self) -> "ArithmeticParams":
        if self.max_operands < self.min_operands:
            raise ValueError(f"max_operands ({self.max_operands}) must be >= min_operands ({self.min_operands})")
        if "*" in self.operators:
            digits = self.max_operands * math.log10(self.max_value + 1)
            if digits > MAX_INTEGER_DIGITS:
                raise ValueError(
                    f"max_value={self.max_value} with max_operands={self.max_operands} and '*' gives answers of up "
                    f"to {digits:.0f} digits; answers are limited to {MAX_INTEGER_DIGITS} digits"
                )
        return self

    def problem_defining(self) -> dict[str, Any]:
        return self.model_dump()


# ---- rules ---------------------------------------------------------------------------------------


def random_expression(rng: random.Random, operands: int, max_value: int, operators: list[str]) -> Expression:
    """A random binary tree with `operands` leaves in [0, max_value]."""
    if operands == 1:
        return rng.randint(0, max_value)
    left = rng.randint(1, operands - 1)
    operator = rng.choice(operators)
    return (
        operator,
        random_expression(rng, left, max_value, operators),
        random_expression(rng, operands - left, max_value, operators),
    )


def evaluate(expression: Expression) -> int:
    if isinstance(expression, int):
        return expression
    operator, left, right = expression
    a, b = evaluate(left), evaluate(right)
    return a + b if operator == "+" else a - b if operator == "-" else a * b


def render(expression: Expression) -> str:
    """Infix text with the parentheses that precedence and left-to-right evaluation require."""
    if isinstance(expression, int):
        return str(expression)
    operator, left, right = expression
    left_text, right_text = render(left), render(right)
    if not isinstance(left, int) and PRECEDENCE[left[0]] < PRECEDENCE[operator]:
        left_text = f"({left_text})"
    # The right side also needs them at equal precedence under '-': a - (b + c) != a - b + c.
    if not isinstance(right, int) and (
        PRECEDENCE[right[0]] < PRECEDENCE[operator] or (operator == "-" and PRECEDENCE[right[0]] == PRECEDENCE[operator])
    ):
        right_text = f"({right_text})"
    return f"{left_text} {operator} {right_text}"


def grade(action_text: str, expected: int) -> tuple[float, bool, str]:
    """(reward, valid, feedback) for an answer; see `parse_integer` for what parses."""
    answer = parse_integer(action_text)
    if answer is None:
        return 0.0, False, f"Invalid answer {excerpt(action_text)}: expected one integer. The answer is {expected}."
    if answer == expected:
        return 1.0, True, f"Correct: {expected}."
    return 0.0, True, f"Wrong: {answer}; the answer is {expected}."


def question(expression_text: str) -> str:
    return f"Compute the value of this expression. Reply with the integer only.\n\n{expression_text}"


# ---- problems ------------------------------------------------------------------------------------


class ArithmeticProblems(IndexedProblemSource):
    def __init__(self, params: ArithmeticParams):
        self.params = params
        self.prefix = problem_id_prefix(NAME, params.problem_defining(), ArithmeticParams().problem_defining())
        super().__init__({"train": params.train_size, "heldout": params.heldout_size}, self._build)

    def _build(self, split: str, index: int) -> Problem:
        p = self.params
        rng = random.Random(stable_seed(NAME, p.seed, split, index))
        for _ in range(MAX_DRAWS):
            operands = rng.randint(p.min_operands, p.max_operands)
            expression = random_expression(rng, operands, p.max_value, list(p.operators))
            text = render(expression)
            if split_of(f"{NAME}:{text}", p.heldout_fraction) == split:
                return Problem(
                    problem_id=f"{self.prefix}/{split}/{index}",
                    environment=NAME,
                    split=split,
                    difficulty=float(operands),
                    # The answer as text: it can exceed the 2**53 that JSON readers keep exactly.
                    params={"expression": text, "answer": str(evaluate(expression)), "operands": operands},
                    max_turns=1,
                )
        raise EnvironmentConfigError(
            f"{NAME}: no {split} expression found in {MAX_DRAWS} draws: the params allow too few distinct "
            f"expressions for a train/held-out split (raise max_value or max_operands)"
        )


# ---- environment ---------------------------------------------------------------------------------


class ArithmeticEnv:
    name: ClassVar[str] = NAME
    action_format: ClassVar[str] = (
        "The value as one integer: ASCII digits with an optional sign (leading zeros allowed), optionally "
        "surrounded by whitespace and followed by one period, e.g. `-42` or `42.`. Rejected (reward 0): "
        "words around it, thousands separators (`1,000`), decimals (`42.0`), non-ASCII digits, expressions."
    )

    def __init__(self, **params: Any):
        self.params = self.check_params(params)
        self._expected: int | None = None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> ArithmeticParams:
        checked = check_params(ArithmeticParams, NAME, params)
        source = ArithmeticProblems(checked)
        source.problem("train", 0), source.problem("heldout", 0)  # a split can be empty for tiny spaces
        return checked

    @classmethod
    def problem_source(cls, **params: Any) -> ArithmeticProblems:
        return ArithmeticProblems(check_params(ArithmeticParams, NAME, params))

    def reset(self, problem: Problem) -> str:
        self._expected = int(problem.params["answer"])
        return question(problem.params["expression"])

    def reference_action(self) -> str | None:
        """The expression's value, the action that solves the current problem (None outside an episode)."""
        return None if self._expected is None else str(self._expected)

    def step(self, action_text: str) -> StepResult:
        if self._expected is None:
            info = {"invalid_action": True, "episode_over": True, "success": False}
            return StepResult("The episode is over: one answer per problem.", 0.0, True, info)
        reward, valid, feedback = grade(action_text, self._expected)
        self._expected = None
        return StepResult(feedback, reward, True, {"invalid_action": not valid, "success": reward == 1.0})

    def close(self) -> None:
        self._expected = None
