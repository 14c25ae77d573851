"""arithmetic: expressions, their printing, the exact-match verifier, problems and splits."""

import random

import pytest

from dartflow.tasks.envs.arithmetic import ArithmeticEnv, evaluate, grade, random_expression, render
from dartflow.tasks.envs.parsing import parse_integer
from dartflow.tasks.envs.protocol import Problem
from dartflow.tasks.envs.registry import EnvironmentConfigError, make_environment, make_problem_source


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42), (" 42 ", 42), ("\t-42\n", -42), ("+7", 7), ("42.", 42), ("42 .", 42), ("007", 7), ("0", 0),
     ("-0", 0), ("\u00a042\u2003", 42), ("9" * 30, int("9" * 30))],
)
def test_parse_integer_accepts_one_integer_with_whitespace_and_a_trailing_period(text, value):
    assert parse_integer(text) == value


@pytest.mark.parametrize(
    "text",
    ["", " ", ".", "-", "+-1", "42..", "42.0", "4 2", "1,000", "1_000", "6*7", "x = 42", "42 is the answer",
     "answer: 42", "٤٢", "４２", "42\u0301", "🙂", "0x2A", "1e3", "9" * 31, "9" * 10_000, "None", "[42]"],
)
def test_parse_integer_rejects_everything_else(text):
    assert parse_integer(text) is None


def test_render_uses_only_the_parentheses_precedence_needs():
    assert render(("-", 10, ("+", 3, 2))) == "10 - (3 + 2)"
    assert render(("-", ("+", 10, 3), 2)) == "10 + 3 - 2"
    assert render(("*", ("+", 1, 2), ("*", 3, 4))) == "(1 + 2) * 3 * 4"
    assert render(("-", 5, ("*", 3, 4))) == "5 - 3 * 4"
    assert render(("-", 5, ("-", 3, 4))) == "5 - (3 - 4)"
    assert evaluate(("-", 10, ("+", 3, 2))) == 5
    assert evaluate(("*", ("+", 1, 2), ("*", 3, 4))) == 36


def test_rendered_text_means_the_same_value_as_the_tree():
    rng = random.Random(0)
    for _ in range(2000):
        expression = random_expression(rng, rng.randint(1, 8), 50, ["+", "-", "*"])
        assert eval(render(expression)) == evaluate(expression)  # Python's precedence is the usual one


def test_grade_is_exact_match_after_parsing():
    assert grade("891", 891) == (1.0, True, "Correct: 891.")
    assert grade(" 891.\n", 891)[0] == 1.0
    assert grade("890", 891) == (0.0, True, "Wrong: 890; the answer is 891.")
    assert grade("-891", 891)[0] == 0.0
    reward, valid, feedback = grade("The answer is 891", 891)
    assert (reward, valid) == (0.0, False) and feedback.startswith("Invalid answer 'The answer is 891'")


def test_episode_is_one_turn_with_reward_one_for_the_right_value():
    env = ArithmeticEnv()
    p = Problem("arithmetic/train/0", "arithmetic", "train", 3.0, {"expression": "2 + 3 * 4", "answer": "14"}, 1)
    assert env.reset(p).endswith("\n\n2 + 3 * 4")
    result = env.step("14")
    assert result == (result.observation, 1.0, True, {"invalid_action": False, "success": True})
    again = env.step("14")
    assert again.done and again.reward == 0.0 and again.info["episode_over"]


def test_reference_action_is_the_value_of_the_current_problem_only():
    env = ArithmeticEnv()
    assert env.reference_action() is None  # no problem yet
    env.reset(Problem("arithmetic/train/0", "arithmetic", "train", 3.0, {"expression": "7 - 9", "answer": "-2"}, 1))
    assert env.reference_action() == "-2" and env.reference_action() == "-2"  # asking changes nothing
    assert env.step(env.reference_action()).info["success"]
    assert env.reference_action() is None  # the episode is over


@pytest.mark.parametrize("action", ["", "garbage", "🙂" * 1000, "1" * 5000, "fourteen", "14 15"])
def test_bad_answers_end_the_episode_with_zero_and_say_why(action):
    env = ArithmeticEnv()
    env.reset(Problem("arithmetic/train/0", "arithmetic", "train", 2.0, {"expression": "7 * 2", "answer": "14"}, 1))
    result = env.step(action)
    assert (result.reward, result.done, result.info) == (0.0, True, {"invalid_action": True, "success": False})
    assert "expected one integer" in result.observation and len(result.observation) < 200


def test_problems_match_their_params_and_the_answer_is_correct():
    source = make_problem_source("arithmetic", {"min_operands": 2, "max_operands": 5, "max_value": 20})
    env = make_environment("arithmetic", {"min_operands": 2, "max_operands": 5, "max_value": 20})
    for index in range(200):
        p = source.problem("train", index)
        assert eval(p.params["expression"]) == int(p.params["answer"])
        assert 2 <= p.difficulty == p.params["operands"] <= 5 and p.max_turns == 1
        env.reset(p)
        assert env.step(p.params["answer"]).reward == 1.0


def test_problems_are_deterministic_with_stable_ids():
    a, b = make_problem_source("arithmetic"), make_problem_source("arithmetic")
    assert [a.problem("heldout", i) for i in range(30)] == [b.problem("heldout", i) for i in range(30)]
    assert a.problem("train", 5).problem_id == "arithmetic/train/5"
    assert a.problem("train", 0).params == {"expression": "30 + 76 + 74", "answer": "180", "operands": 3}
    assert a.sample(random.Random(1)) == b.sample(random.Random(1))
    other = make_problem_source("arithmetic", {"seed": 1}).problem("train", 5)
    assert other.problem_id.startswith("arithmetic@") and other.params != a.problem("train", 5).params


def test_train_and_heldout_never_share_an_expression_even_in_a_small_space():
    params = {"min_operands": 2, "max_operands": 2, "max_value": 5, "operators": ["+"], "heldout_size": 50}
    source = make_problem_source("arithmetic", params)
    train = {source.problem("train", i).params["expression"] for i in range(300)}
    heldout = {p.params["expression"] for p in source.heldout(50)}
    assert train and heldout and not train & heldout
    assert len(train | heldout) == 36  # every expression of the space shows up in one split


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"operators": ["/"]}, "parameter 'operators.0'"),
        ({"min_operands": 5, "max_operands": 3}, "max_operands .3. must be >= min_operands .5."),
        ({"max_value": 10**6, "max_operands": 16}, "limited to 30 digits"),
        ({"max_operand": 3}, "unknown parameter 'max_operand'"),
        ({"max_value": 1, "max_operands": 2, "operators": ["*"], "heldout_fraction": 0.01}, "no heldout expression"),
    ],
)
def test_bad_params_name_the_problem(params, message):
    with pytest.raises(EnvironmentConfigError, match=message):
        ArithmeticEnv.check_params(params)
