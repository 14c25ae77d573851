"""guess_number: the rules against hand-computed episodes, bad actions, problems, ids and splits."""

import random

import pytest

from dartflow.tasks.envs.guess_number import GuessNumberEnv, judge_guess, step_reward
from dartflow.tasks.envs.protocol import Environment, Problem, ProblemSource
from dartflow.tasks.envs.registry import EnvironmentConfigError, make_environment, make_problem_source


def problem(secret=37, low=1, high=100, max_turns=7):
    params = {"low": low, "high": high, "secret": secret, "max_turns": max_turns, "level": 1}
    return Problem("guess_number/train/0", "guess_number", "train", 1.0, params, max_turns)


def binary_search(env, low, high):
    """Plays an episode to its end; returns the step results."""
    results = []
    while True:
        guess = (low + high) // 2
        result = env.step(str(guess))
        results.append(result)
        if result.done:
            return results
        low, high = (guess + 1, high) if result.info["feedback"] == "higher" else (low, guess - 1)


def test_judge_guess_says_where_the_secret_lies():
    assert judge_guess(37, 50) == "lower"
    assert judge_guess(37, 20) == "higher"
    assert judge_guess(37, 37) == "correct"


def test_step_reward_combines_success_turn_cost_and_penalty():
    assert step_reward(True, True, 0.0, 0.0) == 1.0
    assert step_reward(False, True, 0.01, 0.5) == pytest.approx(-0.01)
    assert step_reward(False, False, 0.01, 0.5) == pytest.approx(-0.51)


def test_hand_played_episode_gets_feedback_and_reward_one():
    env = GuessNumberEnv()
    assert isinstance(env, Environment)
    observation = env.reset(problem(secret=37))
    assert "between 1 and 100" in observation and "7 guesses" in observation
    first = env.step("50")
    assert first == (first.observation, 0.0, False, {"invalid_action": False, "feedback": "lower", "turn": 1})
    assert first.observation == "50 is too high: the number is lower. 6 guesses left."
    second = env.step(" 25.\n")
    assert second.observation == "25 is too low: the number is higher. 5 guesses left."
    last = env.step("37")
    assert (last.reward, last.done, last.info["success"]) == (1.0, True, True)
    assert last.observation == "Correct! The number is 37. Solved in 3 guesses."


def test_running_out_of_turns_ends_with_zero_and_reveals_the_secret():
    env = GuessNumberEnv()
    env.reset(problem(secret=37, max_turns=2))
    assert not env.step("1").done
    last = env.step("2")
    assert (last.reward, last.done, last.info["success"]) == (0.0, True, False)
    assert last.observation.endswith("No guesses left: the number was 37.")


@pytest.mark.parametrize(
    "action",
    ["", "   ", "fifty", "I guess 50", "50 60", "5O", "1e3", "50.0", "1,000", "٥٠", "５０", "🙂", "-", "+-3", "9" * 10_000],
)
def test_unparseable_guess_uses_a_turn_and_says_what_is_expected(action):
    env = GuessNumberEnv(invalid_action_penalty=0.25, turn_cost=0.01)
    env.reset(problem(secret=37))
    result = env.step(action)
    assert result.done is False
    assert result.reward == pytest.approx(-0.26)
    assert result.info["invalid_action"] is True
    assert "Invalid guess" in result.observation and "one integer between 1 and 100" in result.observation
    assert "6 guesses left" in result.observation
    assert len(result.observation) < 200  # a huge action is not echoed back whole


@pytest.mark.parametrize("action", ["0", "101", "-5", "99999999999999999999999999"])
def test_out_of_range_guess_is_invalid_and_names_the_range(action):
    env = GuessNumberEnv()
    env.reset(problem(secret=37))
    result = env.step(action)
    assert result.info["invalid_action"] is True
    assert f"{int(action)} is outside the range" in result.observation


def test_steps_after_the_end_or_before_reset_are_answered_not_raised():
    env = GuessNumberEnv()
    early = env.step("5")
    assert early.done and early.info["episode_over"]
    env.reset(problem(secret=5, low=1, high=10, max_turns=3))
    assert env.step("5").info["success"]
    late = env.step("5")
    assert late.done and late.reward == 0.0 and late.info["episode_over"] and late.info["success"]


def test_binary_search_solves_every_default_heldout_problem_within_its_turn_limit():
    source = make_problem_source("guess_number")
    env = make_environment("guess_number")
    for p in source.heldout(source.size("heldout")):
        env.reset(p)
        results = binary_search(env, p.params["low"], p.params["high"])
        assert results[-1].info["success"], p
        assert len(results) <= p.max_turns


def test_problems_are_deterministic_and_ids_stable():
    a, b = make_problem_source("guess_number"), make_problem_source("guess_number")
    assert isinstance(a, ProblemSource)
    assert [a.problem("train", i) for i in range(50)] == [b.problem("train", i) for i in range(50)]
    assert a.problem("train", 17).problem_id == "guess_number/train/17"
    assert a.problem("heldout", 3).problem_id == "guess_number/heldout/3"
    assert a.sample(random.Random(5)) == b.sample(random.Random(5))
    assert a.heldout(4) == [a.problem("heldout", i) for i in range(4)]


def test_pinned_problems_do_not_change_across_versions():
    # Recorded once: a change here would silently change what every stored problem id means.
    source = make_problem_source("guess_number")
    assert source.problem("train", 0).params == {"low": 1, "high": 10, "secret": 5, "max_turns": 5, "level": 0}
    assert source.problem("heldout", 0).params["secret"] == 1


def test_splits_are_disjoint_cover_every_secret_and_follow_the_levels():
    source = make_problem_source("guess_number")
    assert (source.size("train"), source.size("heldout")) == (888, 222)
    seen = {}
    for split in ("train", "heldout"):
        for index in range(source.size(split)):
            p = source.problem(split, index)
            key = (p.params["high"], p.params["secret"])
            assert key not in seen, f"{key} in {seen.get(key)} and {split}"
            seen[key] = split
            assert p.difficulty == p.params["level"] and p.max_turns == [5, 8, 11][p.params["level"]]
    assert len(seen) == 10 + 100 + 1000


def test_custom_levels_get_a_fingerprinted_id_and_their_own_sizes():
    params = {"levels": [{"range_size": 4, "max_turns": 2}], "low": 0, "heldout_fraction": 0.5}
    source = make_problem_source("guess_number", params)
    assert (source.size("train"), source.size("heldout")) == (2, 2)
    p = source.problem("train", 1)
    assert p.problem_id.startswith("guess_number@") and p.problem_id.endswith("/train/1")
    assert 0 <= p.params["secret"] <= 3 and p.params["high"] == 3
    # reward shaping does not change which problems exist, so it keeps the default ids
    assert make_problem_source("guess_number", {"turn_cost": 0.1}).problem("train", 1).problem_id == "guess_number/train/1"
    with pytest.raises(IndexError, match=r"\[0, 2\)"):
        source.problem("train", 2)


def test_high_is_shorthand_for_one_level_with_binary_search_turns_plus_one():
    source = make_problem_source("guess_number", {"low": 1, "high": 16})
    assert (source.size("train"), source.size("heldout")) == (13, 3)
    assert {source.problem("train", i).max_turns for i in range(13)} == {6}  # log2(17) -> 5 guesses, + 1
    same = make_problem_source("guess_number", {"levels": [{"range_size": 16, "max_turns": 6}]})
    assert [same.problem("train", i) for i in range(13)] == [source.problem("train", i) for i in range(13)]
    assert make_problem_source("guess_number", {"high": 16, "max_turns": 4}).problem("train", 0).max_turns == 4


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"high": 16, "levels": [{"range_size": 4, "max_turns": 2}]}, "either high .* or levels, not both"),
        ({"low": 5, "high": 5}, "high - low . 1 must be in .2, 100000., got 1"),
        ({"max_turns": 3}, "max_turns goes with high"),
        ({"levls": []}, "unknown parameter 'levls'"),
        ({"levels": []}, "parameter 'levels'"),
        ({"levels": [{"range_size": 1, "max_turns": 3}]}, "parameter 'levels.0.range_size'"),
        ({"turn_cost": -1}, "parameter 'turn_cost'"),
        ({"heldout_fraction": 1.0}, "parameter 'heldout_fraction'"),
    ],
)
def test_bad_params_name_the_param(params, message):
    with pytest.raises(EnvironmentConfigError, match=message):
        GuessNumberEnv(**params)


def test_step_reward_adds_the_consistency_bonus_only_when_consistent():
    assert step_reward(False, True, 0.0, 0.0, True, 0.1) == pytest.approx(0.1)
    assert step_reward(False, True, 0.0, 0.0, False, 0.1) == 0.0
    assert step_reward(True, True, 0.01, 0.0, True, 0.1) == pytest.approx(1.09)


def test_consistent_guess_bonus_rewards_guesses_the_answers_leave_open():
    env = GuessNumberEnv(consistent_guess_bonus=0.1)
    env.reset(problem(secret=37))
    # By hand: [1, 100] open; 50 -> lower leaves [1, 49]; 60 is inconsistent; 25 -> higher leaves [26, 49];
    # 20 is inconsistent (but valid); 40 is consistent; 37 solves (consistent too).
    rewards = [env.step(guess).reward for guess in ("50", "60", "25", "20", "40", "37")]
    assert rewards == pytest.approx([0.1, 0.0, 0.1, 0.0, 0.1, 1.1])


def test_consistent_guess_bonus_is_never_paid_for_invalid_guesses():
    env = GuessNumberEnv(consistent_guess_bonus=0.1)
    env.reset(problem(secret=37))
    assert env.step("fifty").reward == 0.0
    assert env.step("101").reward == 0.0
    assert env.step("99").reward == pytest.approx(0.1)


def test_range_shifts_move_each_problems_range_and_split_range_secret_pairs():
    params = {"low": 1, "high": 8, "range_shifts": 5, "heldout_fraction": 0.25}
    source = make_problem_source("guess_number", params)
    assert (source.size("train"), source.size("heldout")) == (30, 10)  # 5 ranges x 8 secrets
    pairs = {}
    for split in ("train", "heldout"):
        for index in range(source.size(split)):
            p = source.problem(split, index).params
            assert p["high"] - p["low"] == 7 and 1 <= p["low"] <= 5 and p["low"] <= p["secret"] <= p["high"]
            assert (p["low"], p["secret"]) not in pairs
            pairs[(p["low"], p["secret"])] = split
    assert len(pairs) == 40
    heldout_secrets = {secret for (_, secret), split in pairs.items() if split == "heldout"}
    train_secrets = {secret for (_, secret), split in pairs.items() if split == "train"}
    # Secret values recur across ranges: memorising those of training earns nothing on held-out problems.
    assert len(heldout_secrets & train_secrets) >= 0.7 * len(heldout_secrets)
    env = GuessNumberEnv(**params)
    problem = source.problem("heldout", 0)
    assert f"between {problem.params['low']} and {problem.params['high']}" in env.reset(problem)
    assert source.problem("train", 0).problem_id.startswith("guess_number@")


def test_heldout_by_shift_holds_out_whole_ranges_with_all_their_secrets():
    params = {"low": 1, "high": 8, "range_shifts": 5, "heldout_fraction": 0.25, "heldout_by": "shift"}
    source = make_problem_source("guess_number", params)
    assert (source.size("train"), source.size("heldout")) == (32, 8)  # round(5 x 0.25) = 1 range of 8 secrets
    lows = {split: [source.problem(split, i).params["low"] for i in range(source.size(split))] for split in ("train", "heldout")}
    assert len(set(lows["heldout"])) == 1 and not set(lows["heldout"]) & set(lows["train"])
    assert sorted(source.problem("heldout", i).params["secret"] - lows["heldout"][0] for i in range(8)) == list(range(8))
    assert len(set(lows["train"])) == 4 and all(lows["train"].count(low) == 8 for low in set(lows["train"]))
    pair_ids = {make_problem_source("guess_number", {**params, "heldout_by": "pair"}).problem("train", 0).problem_id}
    assert source.problem("train", 0).problem_id not in pair_ids  # another problem set, another id prefix
    with pytest.raises(EnvironmentConfigError, match="range_shifts >= 2"):
        make_problem_source("guess_number", {"low": 1, "high": 8, "heldout_by": "shift"})


def test_one_range_shift_keeps_the_problem_ids_and_secrets_of_before():
    plain = make_problem_source("guess_number", {"low": 1, "high": 16})
    same = make_problem_source("guess_number", {"low": 1, "high": 16, "range_shifts": 1})
    assert [plain.problem("heldout", i) for i in range(3)] == [same.problem("heldout", i) for i in range(3)]


def test_state_open_interval_names_what_the_answers_leave_open():
    env = GuessNumberEnv(low=1, high=16, state_open_interval=True)
    env.reset(Problem("p", "guess_number", "train", 0.0, {"low": 1, "high": 16, "secret": 11, "max_turns": 6}, 6))
    assert env.step("8").observation == "8 is too low: the number is higher: between 9 and 16. 5 guesses left."
    assert env.step("14").observation == "14 is too high: the number is lower: between 9 and 13. 4 guesses left."
    assert env.step("20").observation.startswith("Invalid guess: 20 is outside the range")
    assert env.step("12").observation == "12 is too high: the number is lower: between 9 and 11. 2 guesses left."


def test_list_candidates_lists_the_numbers_still_possible_once_few_enough_remain():
    env = GuessNumberEnv(low=1, high=16, list_candidates_up_to=8)
    problem = Problem("p", "guess_number", "train", 0.0, {"low": 1, "high": 16, "secret": 11, "max_turns": 6}, 6)
    assert "Still possible" not in env.reset(problem)  # 16 possible: more than 8
    assert env.step("8").observation == (
        "8 is too low: the number is higher. 5 guesses left.\nStill possible:\n9\n10\n11\n12\n13\n14\n15\n16"
    )
    assert env.step("14").observation.endswith("left.\nStill possible:\n9\n10\n11\n12\n13")
    assert env.step("x").observation.endswith("\nStill possible:\n9\n10\n11\n12\n13")  # an invalid guess narrows nothing
    assert env.step("10").observation.endswith("2 guesses left.\nStill possible:\n11\n12\n13")
    assert env.step("13").observation.endswith("1 guess left.\nStill possible:\n11\n12")
    assert env.step("12").observation == "12 is too high: the number is lower. No guesses left: the number was 11."


def test_list_candidates_in_the_intro_when_the_whole_range_is_short_enough():
    env = GuessNumberEnv(low=1, high=4, list_candidates_up_to=4)
    intro = env.reset(Problem("p", "guess_number", "train", 0.0, {"low": 3, "high": 6, "secret": 4, "max_turns": 3}, 3))
    assert intro.endswith("e.g. 4.\nStill possible:\n3\n4\n5\n6")


def test_quiet_answers_name_no_number_but_the_candidates():
    env = GuessNumberEnv(low=1, high=16, list_candidates_up_to=16, quiet_answers=True)
    problem = Problem("p", "guess_number", "train", 0.0, {"low": 1, "high": 16, "secret": 11, "max_turns": 4}, 4)
    env.reset(problem)
    assert env.step("8").observation == "Too low: the number is higher.\nStill possible:\n9\n10\n11\n12\n13\n14\n15\n16"
    assert env.step("40").observation == "Invalid guess: reply with one integer in the range.\nStill possible:\n9\n10\n11\n12\n13\n14\n15\n16"
    assert env.step("14").observation == "Too high: the number is lower.\nStill possible:\n9\n10\n11\n12\n13"
    assert env.step("12").observation == "Too high: the number is lower. No guesses left: the number was 11."
