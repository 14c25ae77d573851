"""Held-out evaluation: the policy's success on problems that no training batch ever draws.

Each configured environment contributes its first `problems_per_environment` held-out problems
(the same ones at every evaluation), each played `samples_per_problem` times with fixed per-episode
seeds, so two evaluations differ only by the policy. At temperature 0 (greedy) the samples of a
problem repeat each other; at temperature > 0 several samples per problem estimate the sampling
policy's success instead of one coin flip per problem. The episodes are written to the store like
any other (split "heldout", metadata `evaluation_version`), so every number here can be audited.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from dartflow.tasks.rollout.sampler import GroupSpec

if TYPE_CHECKING:
    from dartflow.config import RunConfig

EVALUATION_SEED = 0  # every evaluation replays the same per-episode sampling seeds
_METRIC_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. /]")  # MLflow metric names allow these only


@dataclass(frozen=True)
class EvaluationResult:
    """Successes and episodes of one evaluation, in total and per environment."""

    policy_version: int
    by_environment: dict[str, tuple[int, int]]  # environment -> (successes, episodes)
    seconds: float = 0.0

    @property
    def successes(self) -> int:
        return sum(s for s, _ in self.by_environment.values())

    @property
    def episodes(self) -> int:
        return sum(n for _, n in self.by_environment.values())

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def metrics(self) -> dict[str, float]:
        metrics = {
            "eval/heldout_success": self.success_rate,
            "eval/heldout_episodes": float(self.episodes),
            "eval/seconds": self.seconds,
        }
        if len(self.by_environment) > 1:
            for name, (successes, episodes) in sorted(self.by_environment.items()):
                metrics[f"eval/{metric_safe(name)}/heldout_success"] = successes / episodes if episodes else 0.0
        return metrics


def metric_safe(name: str) -> str:
    """An environment name as an MLflow metric name part (`reasoning_gym:chain_sum` -> `reasoning_gym_chain_sum`)."""
    return _METRIC_UNSAFE.sub("_", name)


def heldout_groups(
    environments: Iterable[tuple[str, dict[str, Any]]],
    problems_per_environment: int,
    samples_per_problem: int,
    policy_version: int,
) -> list[GroupSpec]:
    """One group of `samples_per_problem` episodes per held-out problem, environment by environment."""
    from dartflow.tasks.envs.registry import make_problem_source

    if problems_per_environment < 1 or samples_per_problem < 1:
        raise ValueError(
            f"need at least one problem and one sample per problem, got {problems_per_environment} and {samples_per_problem}"
        )
    groups = []
    for name, params in environments:
        problems = make_problem_source(name, params).heldout(problems_per_environment)
        if not problems:
            raise ValueError(f"environment {name} has no held-out problems to evaluate on")
        groups += [
            GroupSpec(problem, samples_per_problem, params=params, metadata={"evaluation_version": policy_version})
            for problem in problems
        ]
    return groups


def tally(outcomes: Iterable[tuple[str, bool]]) -> dict[str, tuple[int, int]]:
    """(environment, success) pairs -> environment -> (successes, episodes)."""
    table: dict[str, list[int]] = {}
    for environment, success in outcomes:
        counts = table.setdefault(environment, [0, 0])
        counts[0] += int(bool(success))
        counts[1] += 1
    return {name: (s, n) for name, (s, n) in table.items()}


@dataclass
class RecordingSink:
    """Appends to the store and remembers what it wrote (no read-back query needed)."""

    store: Any
    outcomes: list[tuple[str, bool]] = field(default_factory=list)

    def append(self, records):
        ids = self.store.append(records)
        self.outcomes += [(record.environment, bool(record.success)) for record in records]
        return ids


async def evaluate_heldout(
    config: RunConfig, *, engine, cluster, store, prompter, metadata: dict[str, Any] | None = None
) -> EvaluationResult:
    """Play the held-out episodes of `config` on the engine's current policy; write them to `store`
    (`metadata` joins each episode's, e.g. to say which policy a comparison evaluated)."""
    from dartflow.tasks.rollout.episode import EpisodeSettings
    from dartflow.tasks.rollout.generation import SamplingSettings
    from dartflow.tasks.rollout.sampler import ListSampler
    from dartflow.tasks.rollout.service import RolloutService

    evaluation = config.evaluation
    version = engine.policy_version
    groups = heldout_groups(
        [(spec.name, spec.params) for spec in config.environments],
        evaluation.heldout_problems,
        evaluation.samples_per_problem,
        version,
    )
    if metadata:
        groups = [replace(group, metadata={**group.metadata, **metadata}) for group in groups]
    settings = EpisodeSettings.from_config(
        config.rollout, sampling=SamplingSettings(temperature=evaluation.temperature, top_p=1.0)
    )
    sink = RecordingSink(store)
    service = RolloutService(
        engine=engine, cluster=cluster, sink=sink, sampler=ListSampler(groups), settings=settings,
        prompter=prompter, concurrent_episodes=config.rollout.concurrent_episodes, run_id=config.run_name,
        seed=EVALUATION_SEED,
    )
    started = time.perf_counter()
    await service.run()
    return EvaluationResult(version, tally(sink.outcomes), seconds=time.perf_counter() - started)
