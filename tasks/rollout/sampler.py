"""Which problem the rollout service runs next, and how many rollouts of it (a group).

The service asks a `GroupSampler` for one `GroupSpec` at a time, when it has room to start a group.
Curation steers the rollouts by being (or feeding) that sampler:

    class CuratedSampler:                      # anything with this method is a GroupSampler
        def next_group(self) -> GroupSpec | None:   # or an awaitable of it; None: nothing to run now
            problem = ...                           # e.g. hard problems more often
            return GroupSpec(problem, size=8 if problem.difficulty > 1 else 2, max_turns=...)

Built-ins: `UniformSampler` (the default: environments by configured weight, problems uniform
within one, fixed group size), `SteeredSampler` (groups pushed by another module run first, then a
fallback sampler) and `ListSampler` (a fixed list, e.g. an evaluation set).
"""

from __future__ import annotations

import bisect
import itertools
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from dartflow.tasks.envs.protocol import Problem

if TYPE_CHECKING:
    from dartflow.config import EnvironmentSpec, RunConfig


def new_group_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class GroupSpec:
    """One group to roll out: `size` episodes of `problem`, sharing one group id."""

    problem: Problem
    size: int
    params: dict[str, Any] | None = None  # environment params of the problem's spec (None: the cluster's)
    max_turns: int | None = None  # a turn budget below the config's (None: the config's)
    group_id: str = field(default_factory=new_group_id)
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able; copied into each trajectory

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"group of {self.problem.problem_id}: size must be >= 1, got {self.size}")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"group of {self.problem.problem_id}: max_turns must be >= 1, got {self.max_turns}")


@runtime_checkable
class GroupSampler(Protocol):
    def next_group(self) -> GroupSpec | None | Awaitable[GroupSpec | None]:
        """The next group to start; None when there is nothing to run (the service then stops)."""
        ...


def weighted_index(rng: random.Random, weights: Sequence[float]) -> int:
    """An index drawn with probability proportional to `weights` (all > 0)."""
    cumulative = list(itertools.accumulate(weights))
    return min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]), len(weights) - 1)


@dataclass(frozen=True)
class _Source:
    name: str
    params: dict[str, Any]
    weight: float
    problems: Any  # ProblemSource


class UniformSampler:
    """Environments by weight, a uniform problem of the chosen one, `group_size` rollouts each."""

    def __init__(
        self,
        environments: Iterable[EnvironmentSpec | tuple[str, dict[str, Any], float]],
        *,
        group_size: int,
        seed: int = 0,
        split: str = "train",
    ):
        from dartflow.tasks.envs.registry import make_problem_source

        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.sources = []
        for entry in environments:
            name, params, weight = (
                (entry.name, entry.params, entry.weight) if hasattr(entry, "name") else entry
            )
            if weight <= 0:
                raise ValueError(f"environment {name}: weight must be > 0, got {weight}")
            self.sources.append(_Source(name, dict(params or {}), float(weight), make_problem_source(name, params)))
        if not self.sources:
            raise ValueError("UniformSampler needs at least one environment")
        self.group_size = group_size
        self.split = split
        self.rng = random.Random(seed)

    @classmethod
    def from_config(cls, config: RunConfig, *, split: str = "train") -> UniformSampler:
        return cls(config.environments, group_size=config.rollout.group_size, seed=config.seed, split=split)

    def next_group(self) -> GroupSpec:
        source = self.sources[weighted_index(self.rng, [s.weight for s in self.sources])]
        problem = source.problems.sample(self.rng, self.split)
        return GroupSpec(problem, self.group_size, params=source.params)


class SteeredSampler:
    """Groups pushed by another module (curation) first, in order; then `fallback`'s."""

    def __init__(self, fallback: GroupSampler | None = None):
        self.fallback = fallback
        self._pushed: deque[GroupSpec] = deque()

    def push(self, *groups: GroupSpec) -> None:
        self._pushed.extend(groups)

    @property
    def pending(self) -> int:
        return len(self._pushed)

    def next_group(self) -> GroupSpec | None | Awaitable[GroupSpec | None]:
        if self._pushed:
            return self._pushed.popleft()
        return None if self.fallback is None else self.fallback.next_group()


class ListSampler:
    """A fixed list of groups (or problems, `group_size` rollouts each), then None."""

    def __init__(
        self,
        items: Iterable[GroupSpec | Problem],
        *,
        group_size: int = 1,
        params: dict[str, Any] | None = None,
    ):
        self._groups = deque(
            item if isinstance(item, GroupSpec) else GroupSpec(item, group_size, params=params) for item in items
        )

    def next_group(self) -> GroupSpec | None:
        return self._groups.popleft() if self._groups else None
