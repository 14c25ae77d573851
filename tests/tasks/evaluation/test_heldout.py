import pytest

from dartflow.tasks.evaluation.heldout import EvaluationResult, RecordingSink, heldout_groups, metric_safe, tally

GUESS = ("guess_number", {"low": 1, "high": 20})
ARITHMETIC = ("arithmetic", {"max_operands": 2})


def test_heldout_groups_are_the_same_heldout_problems_every_time():
    first = heldout_groups([GUESS, ARITHMETIC], 3, 5, policy_version=7)
    again = heldout_groups([GUESS, ARITHMETIC], 3, 5, policy_version=9)
    # 20 secrets, 20% held out -> 4 held-out problems, of which 3 are asked for; arithmetic has plenty.
    assert [g.problem.problem_id for g in first] == [g.problem.problem_id for g in again]
    assert len(first) == 6
    assert all(g.problem.split == "heldout" and g.size == 5 for g in first)
    assert {g.metadata["evaluation_version"] for g in first} == {7}
    assert [g.params for g in first] == [GUESS[1]] * 3 + [ARITHMETIC[1]] * 3
    assert len({g.group_id for g in first}) == 6


def test_heldout_groups_take_what_an_environment_has():
    groups = heldout_groups([GUESS], 100, 1, policy_version=0)
    assert len(groups) == 4  # round(20 * 0.2)


def test_heldout_groups_refuse_empty_requests():
    with pytest.raises(ValueError, match="at least one problem"):
        heldout_groups([GUESS], 0, 1, policy_version=0)
    with pytest.raises(ValueError, match="at least one problem and one sample"):
        heldout_groups([GUESS], 1, 0, policy_version=0)


def test_tally_counts_per_environment():
    outcomes = [("a", True), ("a", False), ("b", False), ("a", True), ("b", False)]
    assert tally(outcomes) == {"a": (2, 3), "b": (0, 2)}
    assert tally([]) == {}


def test_result_rates_and_metrics_by_hand():
    result = EvaluationResult(4, {"guess_number": (3, 4), "reasoning_gym:chain_sum": (1, 4)}, seconds=2.0)
    assert (result.successes, result.episodes) == (4, 8)
    assert result.success_rate == 0.5
    metrics = result.metrics()
    assert metrics["eval/heldout_success"] == 0.5
    assert metrics["eval/heldout_episodes"] == 8
    assert metrics["eval/guess_number/heldout_success"] == 0.75
    assert metrics["eval/reasoning_gym_chain_sum/heldout_success"] == 0.25
    single = EvaluationResult(4, {"guess_number": (1, 2)}).metrics()
    assert "eval/guess_number/heldout_success" not in single  # one environment: the total says it
    assert EvaluationResult(0, {}).success_rate == 0.0


def test_metric_safe_names():
    assert metric_safe("textarena:Wordle-v0") == "textarena_Wordle-v0"
    assert metric_safe("guess_number") == "guess_number"


def test_recording_sink_remembers_outcomes():
    class Store:
        def append(self, records):
            return [f"id{i}" for i, _ in enumerate(records)]

    class Record:
        def __init__(self, environment, success):
            self.environment, self.success = environment, success

    sink = RecordingSink(Store())
    assert sink.append([Record("a", True), Record("b", None)]) == ["id0", "id1"]
    assert sink.outcomes == [("a", True), ("b", False)]
