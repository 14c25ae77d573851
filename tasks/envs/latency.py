"""Injected latency: make any environment as slow as a browser or GUI environment, reproducibly.

Configured by the `latency` key of an environment's params and applied by `make_environment`:
    latency: {kind: fixed, seconds: 0.05}
    latency: {kind: lognormal, median: 0.05, sigma: 1.0, max_seconds: 5}
Every `reset` and `step` sleeps one drawn delay before calling the environment. Delays come from a
`random.Random` seeded at each reset by (seed, problem id, episodes this instance ran before), so a
rerun of the same schedule sleeps the same delays and different problems get different ones.
"""

from __future__ import annotations

import math
import random
import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field

from dartflow.tasks.envs.problems import check_params, stable_seed
from dartflow.tasks.envs.protocol import Environment, Problem, StepResult


class FixedLatency(BaseModel, extra="forbid"):
    kind: Literal["fixed"]
    seconds: float = Field(..., ge=0, le=600, description="Delay of every reset and step.")
    seed: int = Field(0, ge=0, description="Unused (a fixed delay draws nothing); accepted for symmetry.")


class LognormalLatency(BaseModel, extra="forbid"):
    kind: Literal["lognormal"]
    median: float = Field(..., gt=0, le=600, description="Median delay in seconds.")
    sigma: float = Field(..., ge=0, le=5, description="Standard deviation of the delay's logarithm.")
    max_seconds: float | None = Field(None, gt=0, le=3600, description="Delays above this are cut to it.")
    seed: int = Field(0, ge=0, description="Seed of the delay draws.")


LatencySpec = Annotated[Union[FixedLatency, LognormalLatency], Field(discriminator="kind")]


class _LatencyParams(BaseModel, extra="forbid"):
    latency: LatencySpec


def parse_latency(environment: str, value: Any) -> FixedLatency | LognormalLatency:
    """Validate a `latency` params entry; errors name the environment and the bad field."""
    return check_params(_LatencyParams, environment, {"latency": value}).latency


def draw_delay(spec: FixedLatency | LognormalLatency, rng: random.Random) -> float:
    if isinstance(spec, FixedLatency):
        return spec.seconds
    delay = rng.lognormvariate(math.log(spec.median), spec.sigma)
    return delay if spec.max_seconds is None else min(delay, spec.max_seconds)


class LatencyEnvironment:
    """Wraps an environment; sleeps a drawn delay before each of its resets and steps."""

    def __init__(self, inner: Environment, spec: FixedLatency | LognormalLatency):
        self.inner = inner
        self.spec = spec
        self._episodes = 0
        self._rng = random.Random(stable_seed("latency", spec.seed))

    # The protocol's ClassVars, read through from the wrapped environment.
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def action_format(self) -> str:  # type: ignore[override]
        return self.inner.action_format

    def _sleep(self) -> float:
        delay = draw_delay(self.spec, self._rng)
        if delay > 0:
            time.sleep(delay)
        return delay

    def reset(self, problem: Problem) -> str:
        self._rng = random.Random(stable_seed("latency", self.spec.seed, problem.problem_id, self._episodes))
        self._episodes += 1
        self._sleep()
        return self.inner.reset(problem)

    def step(self, action_text: str) -> StepResult:
        delay = self._sleep()
        result = self.inner.step(action_text)
        return result._replace(info={**result.info, "injected_latency_s": delay})

    def close(self) -> None:
        self.inner.close()
