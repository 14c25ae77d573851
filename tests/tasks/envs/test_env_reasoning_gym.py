"""reasoning_gym:<task>: real tasks answered by an oracle and by bad actions; params checked at config time."""

import pytest

reasoning_gym = pytest.importorskip("reasoning_gym")

from dartflow.tasks.envs.reasoning_gym_family import extract_answer  # noqa: E402
from dartflow.tasks.envs.registry import (  # noqa: E402
    EnvironmentConfigError,
    check_environment,
    make_environment,
    make_problem_source,
)

TASKS = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 3, "max_digits": 2},
    "leg_counting": {},
    "word_sorting": {},
    "chain_sum": {"min_terms": 2, "max_terms": 2},
}
SMALL = {"train_size": 50, "heldout_size": 10}


def entry_of(problem):
    """The dataset item, straight from reasoning_gym, that the problem's params name."""
    p = problem.params
    return reasoning_gym.create_dataset(p["task"], seed=p["seed"], size=p["size"], **p["config"])[p["index"]]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_oracle_answers_score_one_and_wrong_ones_less(task):
    name, params = f"reasoning_gym:{task}", {**TASKS[task], **SMALL}
    check_environment(name, params)
    source, env = make_problem_source(name, params), make_environment(name, params)
    for index in range(5):
        problem = source.problem("train", index)
        entry = entry_of(problem)
        assert env.reset(problem) == entry["question"]
        right = env.step(entry["answer"])
        assert (right.reward, right.done, right.info["success"], right.info["invalid_action"]) == (1.0, True, True, False)
        env.reset(problem)
        wrong = env.step(entry["answer"] + " 1")
        assert wrong.done and wrong.reward < 1.0 and not wrong.info["success"]


def test_answer_tags_are_extracted_and_the_last_block_counts():
    assert extract_answer("think... <answer> 42 </answer>") == "42"
    assert extract_answer("<answer>1</answer> no, <answer>2</answer>") == "2"
    assert extract_answer("  plain  ") == "plain"
    source = make_problem_source("reasoning_gym:leg_counting", SMALL)
    env = make_environment("reasoning_gym:leg_counting", SMALL)
    problem = source.problem("train", 0)
    env.reset(problem)
    assert env.step(f"Let me count.\n<answer>{entry_of(problem)['answer']}</answer>").reward == 1.0


@pytest.mark.parametrize("action", ["", "   ", "<answer></answer>", "garbage", "🙂∑ß" * 50, "9" * 20_000, "\x00\x01"])
def test_bad_actions_score_zero_without_raising(action):
    env = make_environment("reasoning_gym:basic_arithmetic", SMALL)
    env.reset(make_problem_source("reasoning_gym:basic_arithmetic", SMALL).problem("train", 1))
    result = env.step(action)
    assert result.done and result.reward == 0.0 and result.info["success"] is False
    assert len(result.observation) < 200
    assert env.step("1").info["episode_over"]


def test_problems_are_deterministic_and_splits_use_disjoint_seeds():
    a = make_problem_source("reasoning_gym:basic_arithmetic")
    b = make_problem_source("reasoning_gym:basic_arithmetic")
    assert a.problem("train", 7) == b.problem("train", 7)
    assert a.problem("train", 7).problem_id == "reasoning_gym:basic_arithmetic/train/7"
    assert (a.size("train"), a.size("heldout")) == (10_000, 200)
    train, heldout = a.problem("train", 0).params, a.heldout(1)[0].params
    # item i comes from Random(seed + i): the two splits' ranges of generator seeds never meet
    assert heldout["seed"] - train["seed"] >= a.size("train")
    configured = make_problem_source("reasoning_gym:basic_arithmetic", {"min_terms": 2, "max_terms": 2, "level": 1})
    problem = configured.problem("train", 7)
    assert problem.problem_id.startswith("reasoning_gym:basic_arithmetic@") and problem.difficulty == 1.0
    assert problem.params["config"] == {"min_terms": 2, "max_terms": 2} and problem.max_turns == 1


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("reasoning_gym:basic_arithmetc", {}, "unknown reasoning_gym task 'basic_arithmetc'. Did you mean: basic_arithmetic"),
        ("reasoning_gym:basic_arithmetic", {"min_termz": 2}, "unknown parameter 'min_termz'. The task's parameters: .*min_terms"),
        ("reasoning_gym:basic_arithmetic", {"size": 10}, "parameter 'size': use 'train_size' and 'heldout_size'"),
        ("reasoning_gym:basic_arithmetic", {"min_terms": 0}, "min_terms must be positive"),
        ("reasoning_gym:basic_arithmetic", {"min_terms": 5, "max_terms": 2}, "max_terms must be >= min_terms"),
        ("reasoning_gym:basic_arithmetic", {"train_size": 0}, "parameter 'train_size' must be an integer >= 1"),
        ("reasoning_gym:basic_arithmetic", {"level": "hard"}, "parameter 'level' must be a number"),
        ("reasoning_gym:composite", {}, "Must specify at least one dataset"),
        ("reasoning_gym:", {}, "name a task after 'reasoning_gym:'"),
    ],
)
def test_config_errors_name_the_task_or_param(name, params, message):
    with pytest.raises(EnvironmentConfigError, match=message):
        check_environment(name, params)


def test_a_task_with_its_own_difficulty_knob_takes_it_as_a_dataset_param():
    # `difficulty` belongs to some datasets' configs; dartflow's own label is `level`.
    check_environment("reasoning_gym:bitwise_arithmetic", {"difficulty": 1})
