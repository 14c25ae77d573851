"""The curated sampler: rounds of groups sized and turn-limited from the attempts it reads."""

import asyncio
import itertools

import pyarrow as pa
import pytest

from dartflow.tasks.curation.sampler import CuratedSampler, sampler_rules_on
from dartflow.tasks.curation.settings import CurationConfig
from dartflow.tasks.envs.protocol import Problem
from dartflow.tasks.rollout.sampler import GroupSpec


class CyclingSampler:
    """Stands in for the uniform sampler: these problems in turn, `group_size` each."""

    def __init__(self, problem_ids: list[str], group_size: int = 4):
        self.group_size = group_size
        self._ids = itertools.cycle(problem_ids)

    def next_group(self) -> GroupSpec:
        problem_id = next(self._ids)
        return GroupSpec(Problem(problem_id, "env", "train", 0.0, {}, None), self.group_size, params={"p": 1})


def attempts(results: dict[str, list[bool]], version: int = 0) -> pa.Table:
    rows = [(pid, ok) for pid, outcomes in results.items() for ok in outcomes]
    return pa.table(
        {
            "environment": ["env"] * len(rows),
            "problem_id": [pid for pid, _ in rows],
            "success": [ok for _, ok in rows],
            "reward": [float(ok) for _, ok in rows],
            "max_policy_version": [version] * len(rows),
            "created_at": pa.array([0] * len(rows), pa.timestamp("us", tz="UTC")),
            "source": ["rollout"] * len(rows),
            "finish_reason": ["done"] * len(rows),
        }
    )


CURATION = CurationConfig.model_validate(
    {
        "rollout_budget": {"enabled": True, "min_group_size": 2, "max_group_size": 8, "rollouts_per_round": 16},
        "turn_limit": {"enabled": True, "min_turns": 2, "max_turns": 10},
    }
)


def test_a_round_gives_hard_problems_more_rollouts_and_turns_than_solved_ones_and_unknown_ones_the_bound():
    # Beta(1,1): 'hard' 1 of 9 -> p = 2/11 (target ceil(log .5 / log(9/11)) = 4); 'solved' 9 of 9 -> p = 10/11.
    seen = attempts({"hard": [True] + [False] * 8, "solved": [True] * 9})
    sampler = CuratedSampler(
        CyclingSampler(["hard", "solved", "new", "hard"]), CURATION, max_turns=10, read_attempts=lambda: seen
    )
    groups = {g.problem.problem_id: g for g in sampler.plan_round()}  # 16 // 4 = 4 draws, 'hard' twice: planned once
    assert sorted(groups) == ["hard", "new", "solved"]
    # Targets: hard 4, solved 2 (min), new (unknown, prior mean 0.5) 2 (min): all fit in 16.
    assert (groups["hard"].size, groups["solved"].size, groups["new"].size) == (4, 2, 2)
    # Turn limits: 2 + round(8 x difficulty): hard 9/11 -> 9 (below the bound: set), solved 1/11 -> 3; unknown -> bound 10 (None).
    assert (groups["hard"].max_turns, groups["solved"].max_turns, groups["new"].max_turns) == (9, 3, None)
    assert groups["hard"].params == {"p": 1} and groups["hard"].metadata["curation"]["bucket"] == "hard"
    metrics = sampler.round_metrics
    assert metrics["curation/round"] == 1 and metrics["curation/rollouts_hard"] == 4
    assert metrics["curation/problems_solved"] == 1 and metrics["curation/problems_unknown"] == 1
    table = sampler.problem_table()
    assert sorted(table["problem_id"].to_pylist()) == ["hard", "new", "solved"]
    assert dict(zip(table["problem_id"].to_pylist(), table["group_size"].to_pylist())) == {"hard": 4, "solved": 2, "new": 2}


def test_next_group_hands_out_a_round_then_plans_the_next_from_fresh_attempts():
    reads = []

    def read():
        reads.append(1)
        return attempts({"a": [False] * 9} if len(reads) > 1 else {})

    only_budget = CurationConfig.model_validate(
        {"rollout_budget": {"enabled": True, "min_group_size": 2, "max_group_size": 8, "rollouts_per_round": 8}}
    )
    sampler = CuratedSampler(CyclingSampler(["a"], group_size=4), only_budget, max_turns=6, read_attempts=read)

    async def take(n):
        return [await sampler.next_group() for _ in range(n)]

    first, second = asyncio.run(take(2))
    assert len(reads) == 2 and sampler.rounds == 2
    assert first.size == 2  # unknown: prior mean 0.5 -> min size
    # 0 of 9 -> p = 1/11: hopeless bucket -> min size, not max (the pool's job); turn limit untouched.
    assert second.size == 2 and second.max_turns is None and sampler.round_metrics["curation/problems_hopeless"] == 1


def test_the_uniform_baseline_is_used_when_no_sampler_rule_is_on():
    assert not sampler_rules_on(CurationConfig())
    assert sampler_rules_on(CurationConfig.model_validate({"turn_limit": {"enabled": True}}))
    assert not sampler_rules_on(CurationConfig.model_validate({"dynamic_sampling": {"enabled": True}}))


def test_attempts_outside_the_recent_window_do_not_count():
    config = CurationConfig.model_validate(
        {"difficulty": {"recent_versions": 2}, "turn_limit": {"enabled": True, "min_turns": 1, "max_turns": 5}}
    )
    old_failures = attempts({"a": [False] * 9}, version=3)
    sampler = CuratedSampler(
        CyclingSampler(["a"]), config, max_turns=5, read_attempts=lambda: old_failures, policy_version=lambda: 10
    )
    (group,) = sampler.plan_round()
    assert group.max_turns is None and sampler.round_metrics["curation/problems_unknown"] == 1


@pytest.mark.parametrize("bad", [{"rollout_budget": {"min_group_size": 1}}, {"turn_limit": {"min_turns": 5, "max_turns": 2}}])
def test_bad_curation_config_is_refused_with_the_field_named(bad):
    with pytest.raises(ValueError, match="min_group_size|min_turns"):
        CurationConfig.model_validate(bad)
