"""The environment contract: what the cluster hosts and the rollout service talks to.

An environment is a family of problems with its own rules. Text in, text out:
`reset(problem) -> observation`, `step(action_text) -> StepResult(observation, reward, done, info)`.
Rewards are computed by the environment (verifiable), never by the model. An unparseable action
is not an exception: it gets a penalised observation that says what was wrong, and the episode goes
on or ends by the environment's rules.

Problems are plain, picklable, JSON-able values so that they cross process boundaries and land in
the trajectory store unchanged: `problem_id` is stable (same id = same problem, across runs and
machines), `params` rebuilds it deterministically inside any worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Problem:
    problem_id: str  # stable id, e.g. "guess_number/train/17"
    environment: str  # registered name that can rebuild it, e.g. "reasoning_gym:basic_arithmetic"
    split: str  # "train" | "heldout"
    difficulty: float  # level: higher is harder; comparable within one environment
    params: dict[str, Any] = field(default_factory=dict)  # JSON-able; enough for reset() to rebuild it
    max_turns: int | None = None  # the environment's own turn bound (None: no bound of its own)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"problem {self.problem_id}: split must be one of {SPLITS}, got {self.split!r}")


class StepResult(NamedTuple):
    observation: str
    reward: float
    done: bool
    info: dict[str, Any]  # JSON-able; "success" (bool) when done, "invalid_action" (bool), ...


@runtime_checkable
class Environment(Protocol):
    """One environment instance: hosts one episode at a time, reused across episodes via reset."""

    name: ClassVar[str]
    action_format: ClassVar[str]  # what a valid action looks like, for prompts and docs

    def reset(self, problem: Problem) -> str: ...

    def step(self, action_text: str) -> StepResult: ...

    def close(self) -> None: ...


@runtime_checkable
class KnowsReferenceAction(Protocol):
    """Optional, on top of `Environment`: an environment that knows how to solve its current state.

    `reference_action()`, called after `reset` (and after each non-final `step`), returns the action
    text that solves the current state in the environment's `action_format` (reasoning_gym: the
    dataset's reference answer as `<answer>...</answer>`), or None when it does not know. The BC
    warm-up plays such actions as demonstrations for environments without a scripted policy
    (`tasks/rollout/demonstrations.py`); the environment's own `step` still judges them, and one
    that does not end in success is not used. It must not change the episode's state.
    """

    def reference_action(self) -> str | None: ...


def reference_action_of(environment: Environment) -> str | None:
    """The environment's reference action for its current state; None when it has none."""
    method = getattr(environment, "reference_action", None)
    return method() if callable(method) else None


def knows_reference_actions(environment: Environment) -> bool:
    return isinstance(environment, KnowsReferenceAction)


@runtime_checkable
class ProblemSource(Protocol):
    """The problems of one configured environment: stable ids, difficulty, a split, seedable sampling.

    Each split is a finite, indexed pool (indexes 0 .. size(split) - 1), so curation can keep
    statistics per problem and an evaluation set is a fixed list.
    """

    def size(self, split: str) -> int:
        """How many problems `split` holds."""
        ...

    def problem(self, split: str, index: int) -> Problem:
        """The `index`-th problem of `split`: the same arguments always give the same problem.

        Raises IndexError outside 0 .. size(split) - 1.
        """
        ...

    def sample(self, rng: random.Random, split: str = "train") -> Problem: ...

    def heldout(self, count: int) -> list[Problem]:
        """The first `count` held-out problems (a fixed evaluation set); all of them if fewer."""
        ...
