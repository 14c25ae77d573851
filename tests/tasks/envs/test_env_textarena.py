"""textarena:<game>: real games played to the end by scripted policies; usable games checked in practice."""

import itertools
import random
import re

import pytest

textarena = pytest.importorskip("textarena")

from dartflow.tasks.envs.registry import (  # noqa: E402
    EnvironmentConfigError,
    check_environment,
    make_environment,
    make_problem_source,
)
from dartflow.tasks.envs.textarena_family import USABLE_GAMES, final_reward  # noqa: E402

def start(game, index=0, split="train"):
    name = f"textarena:{game}"
    problem = make_problem_source(name).problem(split, index)
    env = make_environment(name)
    return env, problem, env.reset(problem)


def test_binary_search_wins_guess_the_number():
    env, problem, observation = start("GuessTheNumber", index=4)
    assert "between 1 and 20" in observation and problem.max_turns == 10
    low, high = 1, 20
    for _ in range(problem.max_turns):
        guess = (low + high) // 2
        result = env.step(f"My guess: [{guess}]")
        if result.done:
            break
        assert not result.info["invalid_action"]
        low, high = (guess + 1, high) if "higher" in result.observation else (low, guess - 1)
    assert (result.reward, result.done, result.info["success"]) == (1.0, True, True)
    assert "Game over: Congratulations" in result.observation


def hanoi_moves(disks, source="A", target="C", spare="B"):
    if disks == 0:
        return []
    return hanoi_moves(disks - 1, source, spare, target) + [(source, target)] + hanoi_moves(disks - 1, spare, target, source)


def test_optimal_moves_solve_tower_of_hanoi():
    env, problem, observation = start("TowerOfHanoi-v0")
    assert "3 disks" in observation
    moves = hanoi_moves(3)
    for turn, (source, target) in enumerate(moves, 1):
        result = env.step(f"[{source} {target}]")
        assert result.done == (turn == len(moves)) and not result.info["invalid_action"]
    assert (result.reward, result.info["success"]) == (1.0, True)


def pegs(code, guess):
    black = sum(c == g for c, g in zip(code, guess))
    return black, len(set(code) & set(guess)) - black


def test_consistent_guesses_crack_mastermind():
    env, problem, observation = start("Mastermind")
    assert "4 digits long, each digit from 1 to 6, with no duplicates" in observation
    candidates = list(itertools.permutations(range(1, 7), 4))
    for _ in range(problem.max_turns):
        guess = candidates[0]
        result = env.step(f"[{' '.join(map(str, guess))}]")
        if result.done:
            break
        black, white = map(int, re.search(r"(\d+) black peg\(s\), (\d+) white", result.observation).groups())
        candidates = [code for code in candidates if pegs(code, guess) == (black, white)]
    assert (result.reward, result.info["success"]) == (1.0, True)


def test_minesweeper_played_to_the_end_by_revealing_cells_in_order():
    env, problem, _ = start("Minesweeper-v0-small")
    cells = itertools.product(range(5), range(5))
    for _ in range(problem.max_turns):
        row, col = next(cells)
        result = env.step(f"[{row} {col}]")
        if result.done:
            break
    assert result.done and isinstance(result.reward, float) and "reason" in result.info


@pytest.mark.parametrize("game", sorted(USABLE_GAMES))
def test_every_usable_game_runs_here_and_ends_on_two_invalid_moves(game):
    check_environment(f"textarena:{game}")
    env, problem, observation = start(game, index=1)
    assert observation.strip()
    first = env.step("\U0001f642 not a move " + "9" * 5_000)
    assert first.done is False and first.info["invalid_action"] is True and first.reward == 0.0
    last = env.step("")
    assert last.done is True and last.info["invalid_action"] is True
    assert isinstance(last.reward, float) and last.info["success"] is False
    assert env.step("[1]").info["episode_over"]


def test_games_replay_identically_whatever_else_uses_random_in_the_process():
    def play(interleave):
        env, problem, observation = start("2048-v0-ultra-easy", index=3)  # spawns random tiles on every move
        seen = [observation]
        for move in ["[w]", "[a]", "[s]", "[d]"] * 3:
            if interleave:
                random.seed(12345)
                other, _, _ = start("Minesweeper-v0", index=9)
                other.step("[3 3]")
            result = env.step(move)
            seen.append(result.observation)
            if result.done:
                break
        return seen

    assert play(interleave=False) == play(interleave=True)


def test_problems_are_seeds_in_disjoint_ranges_with_stable_ids():
    source = make_problem_source("textarena:Minesweeper-v0-small")
    problem = source.problem("train", 5)
    assert problem.problem_id == "textarena:Minesweeper-v0-small/train/5"
    assert problem.params == {"env_id": "Minesweeper-v0-small", "seed": 5} and problem.max_turns == 100
    assert source.heldout(2)[1].params["seed"] == 10**9 + 1
    assert make_problem_source("textarena:Minesweeper-v0-small").problem("train", 5) == problem
    assert make_problem_source("textarena:GuessTheNumber").problem("train", 0).params["env_id"] == "GuessTheNumber-v0"
    boards = [start("Sudoku-v0", index=index)[2] for index in (2, 2, 3)]
    assert boards[0] == boards[1] != boards[2]


def test_non_numeric_textarena_rewards_count_as_zero():
    assert final_reward({0: 1}) == (1.0, None)
    reward, note = final_reward({0: "Bad action. Use `[k]`."})
    assert reward == 0.0 and "not a number" in note


@pytest.mark.parametrize(
    ("game", "message"),
    [
        ("Wordle-v0", "Wordle-v0 needs NLTK word lists, which it downloads from the internet"),
        ("Hangman", "Hangman-v0 needs NLTK"),
        ("TwentyQuestions-v0", "needs an OpenRouter API key"),
        ("Chess-v0", "Chess-v0 is a two-player game, and its source only compiles on Python 3.12"),
        ("Klondike-v0", "syntax error"),
        ("TicTacToe-v0", "TicTacToe-v0 is not a single-player game"),
        ("QuantumTicTacToe-v0", "is a two-player game"),
        ("Sokoban-v0-medium", "reset generates a level for 15-40 s"),
        ("GuessTheNumbr-v0", "unknown textarena game 'GuessTheNumbr-v0'. Did you mean: GuessTheNumber-v0"),
    ],
)
def test_games_that_cannot_run_here_are_rejected_at_config_time_with_the_reason(game, message):
    with pytest.raises(EnvironmentConfigError, match=re.escape(message)) as error:
        check_environment(f"textarena:{game}")
    assert "Usable games: 2048-v0" in str(error.value) and "TowerOfHanoi-v0" in str(error.value)


def test_unknown_params_are_rejected_naming_them():
    with pytest.raises(EnvironmentConfigError, match="unknown parameter 'max_turns'"):
        check_environment("textarena:GuessTheNumber-v0", {"max_turns": 3})
    with pytest.raises(EnvironmentConfigError, match="parameter 'seed' must be an integer"):
        check_environment("textarena:GuessTheNumber-v0", {"seed": "x"})


def test_a_rejected_word_game_does_fail_in_practice_here():
    # Keeps UNUSABLE_GAMES honest: if NLTK data ever ships with the machine, this tells us.
    with pytest.raises(LookupError, match="words"):
        textarena.make("Wordle-v0-raw").reset(num_players=1, seed=0)
