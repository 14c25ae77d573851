"""Problem samplers: weights, group sizes, steering by another module, fixed lists."""

import asyncio
import random
from collections import Counter

import pytest

from dartflow.config import validate_config
from dartflow.tasks.envs.registry import make_problem_source
from dartflow.tasks.rollout.sampler import (
    GroupSampler,
    GroupSpec,
    ListSampler,
    SteeredSampler,
    UniformSampler,
    weighted_index,
)

ENVIRONMENTS = [("guess_number", {"high": 16}, 3.0), ("arithmetic", {"max_operands": 2}, 1.0)]


def test_weighted_index_follows_the_weights():
    rng = random.Random(0)
    counts = Counter(weighted_index(rng, [3.0, 1.0, 0.5]) for _ in range(9000))
    assert set(counts) == {0, 1, 2}
    assert counts[0] / 9000 == pytest.approx(3 / 4.5, abs=0.02)
    assert counts[2] / 9000 == pytest.approx(0.5 / 4.5, abs=0.02)


def test_uniform_sampler_draws_environments_by_weight_with_a_fixed_group_size():
    sampler = UniformSampler(ENVIRONMENTS, group_size=4, seed=1)
    groups = [sampler.next_group() for _ in range(400)]
    environments = Counter(group.problem.environment for group in groups)
    assert environments["guess_number"] / 400 == pytest.approx(0.75, abs=0.06)
    assert all(group.size == 4 and group.problem.split == "train" for group in groups)
    assert len({group.group_id for group in groups}) == 400
    # The params travel with the problem, so the cluster hosts it as configured.
    assert {tuple(sorted(group.params)) for group in groups} == {("high",), ("max_operands",)}
    source = make_problem_source("guess_number", {"high": 16})
    problem = next(group.problem for group in groups if group.problem.environment == "guess_number")
    assert any(source.problem("train", i) == problem for i in range(source.size("train")))


def test_uniform_sampler_is_reproducible_from_its_seed():
    a, b = UniformSampler(ENVIRONMENTS, group_size=2, seed=7), UniformSampler(ENVIRONMENTS, group_size=2, seed=7)
    assert [a.next_group().problem for _ in range(20)] == [b.next_group().problem for _ in range(20)]
    other = UniformSampler(ENVIRONMENTS, group_size=2, seed=8)
    assert [a.next_group().problem for _ in range(20)] != [other.next_group().problem for _ in range(20)]


def test_uniform_sampler_from_the_run_config():
    config = validate_config({
        "environments": [{"name": "arithmetic", "weight": 2.0}, {"name": "guess_number", "params": {"high": 8}}],
        "rollout": {"group_size": 3},
        "seed": 5,
    })
    sampler = UniformSampler.from_config(config)
    assert [(s.name, s.weight) for s in sampler.sources] == [("arithmetic", 2.0), ("guess_number", 1.0)]
    assert sampler.next_group().size == 3 and isinstance(sampler, GroupSampler)


def test_steered_sampler_runs_pushed_groups_first_then_its_fallback():
    fallback = UniformSampler(ENVIRONMENTS[1:], group_size=2, seed=0)
    steered = SteeredSampler(fallback)
    hard = make_problem_source("guess_number", {}).problem("train", 800)
    steered.push(GroupSpec(hard, size=8, max_turns=12, metadata={"reason": "hard"}), GroupSpec(hard, size=1))
    assert steered.pending == 2
    first, second, third = steered.next_group(), steered.next_group(), steered.next_group()
    assert (first.size, first.max_turns, first.metadata) == (8, 12, {"reason": "hard"})
    assert second.size == 1 and first.group_id != second.group_id
    assert third.problem.environment == "arithmetic" and third.size == 2
    assert SteeredSampler().next_group() is None


def test_a_sampler_may_be_async():
    class AsyncSampler:
        async def next_group(self):
            await asyncio.sleep(0)
            return None

    assert isinstance(AsyncSampler(), GroupSampler)
    assert asyncio.run(SteeredSampler(AsyncSampler()).next_group()) is None


def test_list_sampler_gives_its_groups_then_none():
    problems = make_problem_source("arithmetic", {}).heldout(3)
    sampler = ListSampler(problems, group_size=2)
    groups = [sampler.next_group() for _ in range(3)]
    assert [g.problem for g in groups] == problems and all(g.size == 2 for g in groups)
    assert sampler.next_group() is None


def test_group_spec_is_validated():
    problem = make_problem_source("arithmetic", {}).problem("train", 0)
    with pytest.raises(ValueError, match="size must be >= 1"):
        GroupSpec(problem, size=0)
    with pytest.raises(ValueError, match="max_turns"):
        GroupSpec(problem, size=1, max_turns=0)
    with pytest.raises(ValueError, match="group_size"):
        UniformSampler(ENVIRONMENTS, group_size=0)
