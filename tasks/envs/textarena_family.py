"""`textarena:<game>`: textarena's single-player games that run offline here, as multi-turn environments.

`<game>` is a textarena env id (`GuessTheNumber-v0`, `Minesweeper-v0-small`) or a bare game name,
which means its `-v0` (`GuessTheNumber`). A problem is (env id, seed). Per episode:
`make(id + "-raw")` -> `reset(num_players=1, seed=)` -> `get_observation()` -> `step(action)` ...
and, once done, `close()` -> (rewards, game_info). The reward of the final step is textarena's
reward for player 0 (its scale is the game's: 1 for a win, often a progress fraction otherwise);
earlier steps get 0. `success` means a final reward >= 1. Observations are the messages the game
sent since the last action (the agent's own action is not echoed back), and the reason at the end.
textarena tolerates one invalid move (it warns; `invalid_action` is set) and ends the game on the
second in a row.

Which games: checked with textarena 0.7.4 on Python 3.11, offline (`USABLE_GAMES`). The others are
rejected at config time with the reason (`UNUSABLE_GAMES`, or: not single-player).

Params: seed (0), train_size (100_000), heldout_size (200), level (0.0). Train seeds are
seed + index, held-out seeds seed + 10**9 + index: disjoint, but a game with few distinct starts
(TowerOfHanoi, Countdown, Cryptarithm and PegJump have one) repeats them across splits.
textarena seeds the process-wide `random` module; each instance here keeps its own copy of that
state and swaps it in around every call, so episodes sharing a worker stay reproducible.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from dartflow.tasks.envs.parsing import excerpt
from dartflow.tasks.envs.problems import EnvironmentConfigError, IndexedProblemSource, problem_id_prefix
from dartflow.tasks.envs.protocol import Problem, StepResult

PREFIX = "textarena"
TESTED_VERSION = "0.7.4"
HELDOUT_SEED_OFFSET = 10**9
OWN_DEFAULTS: dict[str, Any] = {"seed": 0, "train_size": 100_000, "heldout_size": 200, "level": 0.0}

# Played here to the end (reset, invalid and valid moves, close) with textarena 0.7.4.
USABLE_GAMES = frozenset(
    [f"2048-v0{variant}" for variant in ("", "-ultra-easy", "-mega-easy", "-super-easy", "-very-easy", "-easy")]
    + [f"2048-v0{variant}" for variant in ("-hard", "-very-hard", "-extreme", "-3x3", "-5x5", "-6x6", "-8x8", "-10x10")]
    + ["Bandit-v0", "Bandit-v0-hard", "Blackjack-v0", "Blackjack-v0-long", "Countdown-v0"]
    + ["Crosswords-v0", "Crosswords-v0-hardcore", "Cryptarithm-v0", "FifteenPuzzle-v0"]
    + ["FrozenLake-v0", "FrozenLake-v0-random", "FrozenLake-v0-hardcore"]
    + ["GuessTheNumber-v0", "GuessTheNumber-v0-hardcore", "LightsOut-v0", "LogicPuzzle-v0", "LogicPuzzle-v0-hard"]
    + ["Mastermind-v0", "Mastermind-v0-hard", "Mastermind-v0-extreme"]
    + ["Minesweeper-v0", "Minesweeper-v0-small", "Minesweeper-v0-medium", "Minesweeper-v0-hard"]
    + ["PegJump-v0", "RushHour-v0", "Secretary-v0", "Secretary-v0-long", "Set-v0", "Slitherlink-v0"]
    + ["Sokoban-v0"]
    + ["Sudoku-v0-very-easy", "Sudoku-v0-easy", "Sudoku-v0", "Sudoku-v0-medium", "Sudoku-v0-hard"]
    + ["ThreeCardMonte-v0"]
    + [f"TowerOfHanoi-v0{variant}" for variant in ("", "-medium", "-hard", "-hardcore", "-extreme")]
)

_NLTK = "needs NLTK word lists, which it downloads from the internet at reset (no internet here)"
_API_KEY = "needs an OpenRouter API key (an LLM plays the other side of the game)"
_PY312 = "is a two-player game, and its source only compiles on Python 3.12 (nested f-string quotes)"
_TWO_PLAYER = "is a two-player game (it starts with one player but scores two)"
UNUSABLE_GAMES: dict[str, str] = {
    **{game: _NLTK for game in ("Hangman-v0", "Hangman-v0-hardcore", "WordSearch-v0", "WordSearch-v0-hardcore")},
    **{game: _NLTK for game in ("WordLadder-v0", "WordLadder-v0-medium", "WordLadder-v0-hard")},
    **{game: _NLTK for game in ("Wordle-v0", "Wordle-v0-hardcore", "Wordle-v0-long", "Wordle-v0-long-hardcore")},
    **{game: _API_KEY for game in ("GuessWho-v0", "TwentyQuestions-v0", "TwentyQuestions-v0-hardcore")},
    **{game: _PY312 for game in ("Chess-v0", "Chess-v0-long", "Chess-v0-blind", "Checkers-v0", "Checkers-v0-long")},
    "Klondike-v0": "does not import: its source has a syntax error in textarena 0.7.4",
    "BabyAiText-v0": "needs the packages gym and babyai-text, which are not dependencies of dartflow",
    "Sokoban-v0-medium": "runs, but its reset generates a level for 15-40 s here: too slow for a reset timeout",
    "QuantumTicTacToe-v0": _TWO_PLAYER,
    "SpiteAndMalice-v0": _TWO_PLAYER,
}

GAME_MESSAGE_SEPARATOR = "\n\n"


def canonical_game(game: str) -> str:
    """A bare game name means its `-v0`; ids pass through."""
    return game if "-v" in game else f"{game}-v0"


def check_game(game: str) -> str:
    """The env id to play, or an EnvironmentConfigError saying why the game cannot run here."""
    env_id = canonical_game(game)
    if env_id in USABLE_GAMES:
        return env_id
    usable = f"Usable games: {', '.join(sorted(USABLE_GAMES))}"
    if env_id in UNUSABLE_GAMES:
        raise EnvironmentConfigError(f"{PREFIX}:{game}: {env_id} {UNUSABLE_GAMES[env_id]}. {usable}")
    if env_id in _textarena_registry():
        raise EnvironmentConfigError(f"{PREFIX}:{game}: {env_id} is not a single-player game. {usable}")
    close = difflib.get_close_matches(env_id, sorted(USABLE_GAMES), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise EnvironmentConfigError(f"{PREFIX}:{game}: unknown textarena game '{env_id}'.{hint} {usable}")


def _textarena_registry() -> set[str]:
    try:
        from textarena.envs.registration import ENV_REGISTRY
    except ImportError:
        return set()
    return set(ENV_REGISTRY)


def _check_installed() -> None:
    from importlib import metadata

    try:
        version = metadata.version("textarena")
    except metadata.PackageNotFoundError:
        raise EnvironmentConfigError(f"{PREFIX}: the package textarena is not installed") from None
    if version != TESTED_VERSION:
        import warnings

        warnings.warn(f"textarena {version} is installed; its usable games were checked with {TESTED_VERSION}")


def _own_params(game: str, params: dict[str, Any]) -> dict[str, Any]:
    own = dict(OWN_DEFAULTS)
    for key, value in params.items():
        if key not in OWN_DEFAULTS:
            raise EnvironmentConfigError(
                f"{PREFIX}:{game}: unknown parameter '{key}' (known parameters: {', '.join(OWN_DEFAULTS)}, latency)"
            )
        own[key] = value
    for key in ("seed", "train_size", "heldout_size"):
        low = 0 if key == "seed" else 1
        if not isinstance(own[key], int) or isinstance(own[key], bool) or own[key] < low:
            raise EnvironmentConfigError(f"{PREFIX}:{game}: parameter '{key}' must be an integer >= {low}, got {own[key]!r}")
    if not isinstance(own["level"], (int, float)) or isinstance(own["level"], bool):
        raise EnvironmentConfigError(f"{PREFIX}:{game}: parameter 'level' must be a number, got {own['level']!r}")
    return own


def format_messages(messages: list[tuple[int, str, Any]]) -> str:
    """The game's messages as one observation, without the echo of the agent's own action."""
    from textarena import ObservationType

    texts = [str(text).strip() for _, text, kind in messages if kind != ObservationType.PLAYER_ACTION]
    return GAME_MESSAGE_SEPARATOR.join(text for text in texts if text)


def final_reward(rewards: Any) -> tuple[float, str | None]:
    """Player 0's reward, and a note when textarena gave something else than a number.

    Countdown, Cryptarithm, Slitherlink and ThreeCardMonte swap set_invalid_move's arguments in
    0.7.4: a game lost by invalid moves then "rewards" the reason text. It counts as 0.
    """
    value = rewards.get(0) if isinstance(rewards, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None
    return 0.0, f"textarena reward {value!r} is not a number: counted as 0"


class TextArenaProblems(IndexedProblemSource):
    def __init__(self, game: str, env_id: str, own: dict[str, Any]):
        self.game, self.env_id, self.own = game, env_id, own
        self.prefix = problem_id_prefix(f"{PREFIX}:{game}", own, OWN_DEFAULTS)
        import textarena

        self.max_turns = getattr(textarena.make(f"{env_id}-raw"), "max_turns", None)
        super().__init__({"train": own["train_size"], "heldout": own["heldout_size"]}, self._build)

    def _build(self, split: str, index: int) -> Problem:
        seed = self.own["seed"] + (HELDOUT_SEED_OFFSET if split == "heldout" else 0) + index
        return Problem(
            problem_id=f"{self.prefix}/{split}/{index}",
            environment=f"{PREFIX}:{self.game}",
            split=split,
            difficulty=float(self.own["level"]),
            params={"env_id": self.env_id, "seed": seed},
            max_turns=self.max_turns,
        )


class TextArenaEnv:
    name: ClassVar[str] = PREFIX
    action_format: ClassVar[str] = (
        "A move as the game's first message describes it; most games read the move inside square "
        "brackets, e.g. `[5]` or `[0 1]`, and ignore text around it. One invalid move gets a warning, "
        "a second in a row ends the game."
    )

    def __init__(self, env_id: str):
        self.env_id = env_id
        self._game: Any = None
        self._random_state: Any = None
        self._done = True

    @contextmanager
    def _own_global_random(self) -> Iterator[None]:
        outer = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outer)

    def reset(self, problem: Problem) -> str:
        import textarena

        self._game = textarena.make(f"{problem.params['env_id']}-raw")
        self._random_state = random.Random(problem.params["seed"]).getstate()
        with self._own_global_random():
            self._game.reset(num_players=1, seed=problem.params["seed"])
            _, messages = self._game.get_observation()
        if not isinstance(self._game.state, textarena.SinglePlayerState):
            raise RuntimeError(f"{problem.params['env_id']} is not a single-player game")
        self._done = False
        return format_messages(messages)

    def step(self, action_text: str) -> StepResult:
        if self._done:
            info = {"invalid_action": True, "episode_over": True, "success": False}
            return StepResult("The game is over: no more moves are taken.", 0.0, True, info)
        try:
            with self._own_global_random():
                done, _ = self._game.step(action_text)
                _, messages = self._game.get_observation()
                rewards, game_info = self._game.close() if done else (None, None)
        except Exception as error:  # a game that chokes on odd text must not end the worker
            self._done = True
            info = {"invalid_action": True, "success": False, "env_error": f"{type(error).__name__}: {error}"}
            return StepResult(f"The game failed on the move {excerpt(action_text)} and ended.", 0.0, True, info)
        observation = format_messages(messages)
        info: dict[str, Any] = {"invalid_action": getattr(self._game.state, "error_count", 0) > 0}
        if not done:
            return StepResult(observation, 0.0, False, info)
        self._done = True
        reward, note = final_reward(rewards)
        player = (game_info or {}).get(0, {})
        info.update(success=reward >= 1.0, invalid_action=info["invalid_action"] or bool(player.get("invalid_move")))
        if note:
            info["reward_note"] = note
        reason = player.get("reason")
        if reason:
            info["reason"] = str(reason)
            observation = f"{observation}{GAME_MESSAGE_SEPARATOR}Game over: {reason}".strip()
        return StepResult(observation, reward, True, info)

    def close(self) -> None:
        self._game, self._done = None, True


class TextArenaFamily:
    def check(self, game: str, params: dict[str, Any]) -> None:
        _own_params(game, params)
        check_game(game)
        _check_installed()

    def make_environment(self, game: str, params: dict[str, Any]) -> TextArenaEnv:
        _own_params(game, params)
        return TextArenaEnv(check_game(game))

    def make_problem_source(self, game: str, params: dict[str, Any]) -> TextArenaProblems:
        return TextArenaProblems(game, check_game(game), _own_params(game, params))


FAMILY = TextArenaFamily()
