"""Reference-action demonstrations: environments without a script demonstrate their own answers,
the verifier judges each one, and failures are dropped and counted."""

from typing import ClassVar

import pytest

from dartflow.storage import records_to_table, validate_trajectories
from dartflow.storage.records import TrajectoryRecord
from dartflow.tasks.envs.problems import IndexedProblemSource
from dartflow.tasks.envs.protocol import Problem, ProblemSource, StepResult
from dartflow.tasks.envs.registry import register_environment
from dartflow.tasks.rollout.demonstrations import (
    REFERENCE,
    demonstration_quotas,
    environment_keys,
    usable_for_bc,
    warmup_demonstrations,
)
from dartflow.tasks.rollout.prompts import ChatPrompter, action_format_of

reasoning_gym = pytest.importorskip("reasoning_gym")

SMALL = {"train_size": 50, "heldout_size": 5}
BROKEN_TARGET = 3  # count_to_reference's reference action is wrong on this problem


@register_environment("count_to_reference")
class CountToReferenceEnv:
    """A user's multi-turn environment that knows its answer: say 1..target, one number per turn."""

    name: ClassVar[str] = "count_to_reference"
    action_format: ClassVar[str] = "the next number"

    def __init__(self, broken: bool = False):
        self.broken = broken  # every reference action wrong
        self.next, self.target = 1, 0

    @classmethod
    def problem_source(cls, broken: bool = False) -> ProblemSource:
        def build(split: str, index: int) -> Problem:
            return Problem(f"count_to_reference/{split}/{index}", "count_to_reference", split, 1.0, {"target": index + 1})

        return IndexedProblemSource({"train": 4, "heldout": 1}, build)

    def reset(self, problem: Problem) -> str:
        self.next, self.target = 1, problem.params["target"]
        return f"Count to {self.target}."

    def reference_action(self) -> str | None:
        return "nine" if self.broken or self.target == BROKEN_TARGET else str(self.next)

    def step(self, action_text: str) -> StepResult:
        if action_text.strip() != str(self.next):
            return StepResult(f"Say {self.next}.", 0.0, False, {"invalid_action": True})
        self.next += 1
        done = self.next > self.target
        return StepResult("ok", 1.0 if done else 0.0, done, {"success": done} if done else {})

    def close(self) -> None:
        pass


@register_environment("count_to_no_policy")
class NoPolicyEnv(CountToReferenceEnv):
    """Neither a script nor a reference action."""

    reference_action = None


def record(success: bool) -> TrajectoryRecord:
    return TrajectoryRecord("p", "g", "e", [], "done", success=success)


def test_quotas_share_round_robin_and_only_reference_failures_are_unusable():
    assert demonstration_quotas(["a", "b", "c"], 7) == {"a": 3, "b": 2, "c": 2}
    assert demonstration_quotas(["a"], 5) == {"a": 5}
    assert usable_for_bc(record(True), REFERENCE) and not usable_for_bc(record(False), REFERENCE)
    assert usable_for_bc(record(False), "random_guess_script")  # a script's episodes teach the format as played
    assert not usable_for_bc(None, REFERENCE) and not usable_for_bc(None, "random_guess_script")


def test_reasoning_gym_demonstrates_its_reference_answer_in_the_scored_format_and_rollout_layout(tiny_model_dir):
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    environments = [("reasoning_gym:leg_counting", SMALL), ("reasoning_gym:word_sorting", SMALL)]
    played = warmup_demonstrations(environments, prompter, 6, seed=2, run_id="demo")
    validate_trajectories(records_to_table(played.records))
    assert len(played.records) == 6 and all(r.success and r.source == "demonstration" for r in played.records)
    assert played.policies == {name: REFERENCE for name, _ in environments}
    assert played.dropped == {"reasoning_gym:leg_counting": 0, "reasoning_gym:word_sorting": 0}
    for r in played.records:
        (turn,) = r.turns
        index = int(r.problem_id.rsplit("/", 1)[1])
        entry = reasoning_gym.create_dataset(r.environment.split(":")[1], seed=0, size=SMALL["train_size"])[index]
        assert turn.observation == entry["question"] and turn.action == f"<answer>{entry['answer']}</answer>"
        assert turn.reward == 1.0 and r.metadata["script"] == REFERENCE
        # Exactly the tokens the rollout service would prompt with and sample.
        expected_prompt = prompter.start(entry["question"], action_format_of(r.environment, SMALL)).prompt_ids
        assert list(turn.prompt_token_ids) == list(expected_prompt)
        assert list(turn.response_token_ids) == prompter.encode(turn.action) + list(prompter.stop_token_ids[:1])


def test_scripted_and_reference_environments_mix_in_one_run(tiny_model_dir):
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    environments = [
        ("guess_number", {"low": 1, "high": 8}),
        ("arithmetic", {"max_operands": 2}),  # has a script and a reference action: the script wins
        ("reasoning_gym:chain_sum", {"min_terms": 2, "max_terms": 2, **SMALL}),
        ("count_to_no_policy", {}),  # neither: left out
    ]
    played = warmup_demonstrations(environments, prompter, 9, seed=0, max_turns=4, run_id="demo")
    assert played.policies == {
        "guess_number": "random_guess_script",
        "arithmetic": "arithmetic_script",
        "reasoning_gym:chain_sum": REFERENCE,
    }
    by_env = {name: [r for r in played.records if r.environment == name] for name in played.policies}
    assert {name: len(records) for name, records in by_env.items()} == dict.fromkeys(played.policies, 3)
    assert all(r.metadata["script"] == played.policies[r.environment] for r in played.records)
    assert all(r.success for r in by_env["reasoning_gym:chain_sum"] + by_env["arithmetic"])
    assert [r.environment for r in played.records[:3]] == list(played.policies)  # interleaved, round-robin
    validate_trajectories(records_to_table(played.records))


def test_reference_demonstrations_that_fail_are_dropped_counted_and_replaced(tiny_model_dir):
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    played = warmup_demonstrations([("count_to_reference", {})], prompter, 12, seed=5, max_turns=6, run_id="demo")
    records, dropped = played.records, played.dropped["count_to_reference"]
    assert len(records) == 12 and all(r.success for r in records)
    assert {len(r.turns) for r in records} <= {1, 2, 4}  # every target but the broken one, all its turns
    assert dropped > 0 and played.played["count_to_reference"] == 12 + dropped
    assert f"{dropped} of {12 + dropped} dropped" in played.summary()


def test_a_real_task_without_reference_answers_and_a_wrong_reference_fail_clearly(tiny_model_dir):
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    # rush_hour's items carry answer None (many solutions): no demonstration can be built.
    with pytest.raises(ValueError, match=r"none of 8 demonstrations is usable.*reasoning_gym:rush_hour"):
        warmup_demonstrations([("reasoning_gym:rush_hour", SMALL)], prompter, 2, run_id="demo")
    with pytest.raises(ValueError, match="none of 12 demonstrations is usable"):
        warmup_demonstrations([("count_to_reference", {"broken": True})], prompter, 3, run_id="demo")
    with pytest.raises(ValueError, match="no demonstrations for any of.*reference_action"):
        warmup_demonstrations([("count_to_no_policy", {})], prompter, 3, run_id="demo")


def test_a_real_reference_answer_that_scores_zero_is_dropped(tiny_model_dir):
    # ab's train item 18 has the empty string as its answer, which the environment scores 0.
    assert reasoning_gym.create_dataset("ab", seed=0, size=19)[18]["answer"] == ""
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    params = {"train_size": 19, "heldout_size": 1}
    played = warmup_demonstrations([("reasoning_gym:ab", params)], prompter, 8, seed=3, run_id="demo")
    assert played.dropped == {"reasoning_gym:ab": 2} and played.played == {"reasoning_gym:ab": 10}  # seed 3 draws item 18 twice
    assert len(played.records) == 8 and all(r.success for r in played.records)
    assert not any(r.problem_id.endswith("/train/18") for r in played.records)


def test_one_task_configured_twice_with_other_params_demonstrates_both_configs(tiny_model_dir):
    assert environment_keys(["a", "b", "a", "a"]) == ["a", "b", "a #2", "a #3"]
    prompter = ChatPrompter.from_model_dir(tiny_model_dir)
    name = "reasoning_gym:chain_sum"
    environments = [(name, {"min_terms": 2, "max_terms": 2, **SMALL}), (name, {"min_terms": 4, "max_terms": 4, **SMALL})]
    played = warmup_demonstrations(environments, prompter, 4, seed=0, run_id="demo")
    assert played.kept == {name: 2, f"{name} #2": 2} and all(r.success for r in played.records)
    configs = [r.problem_id.split("/train/")[0] for r in played.records]  # the id prefix names the params
    assert configs[0] == configs[2] != configs[1] == configs[3]
    assert "demonstrations: reasoning_gym:chain_sum #2: 2 by reference_action" in played.summary()
