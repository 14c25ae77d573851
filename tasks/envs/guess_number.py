"""guess_number: find a hidden integer in [low, high]; after each guess the environment says higher/lower.

Rules (pure functions below): a guess is one integer (see `parse_integer`). Every step uses one turn,
valid or not. A correct guess ends the episode with reward 1; running out of turns ends it with 0.
Each step also costs `turn_cost` (so faster solutions earn more), and an invalid guess (unparseable
or outside the range) costs `invalid_action_penalty` more. Optional shaping: `consistent_guess_bonus`
is earned by each guess that lies inside the interval the earlier answers leave open (a guess that
could still be right), so a policy that starts to use the answers is rewarded before it solves
episodes reliably; success (the solved flag) is unaffected. With `state_open_interval` each answer
also names the interval the answers so far leave open ("... the number is higher: between 8 and
16."): an easier variant, where using the answers means reading one interval instead of combining
all of them. With `list_candidates_up_to: N` the intro and each answer also list, one per line, every
number still possible whenever at most N are (the easiest variant: using the answers means copying
one of the listed numbers, which a small model learns long before it learns to compare numbers).
`quiet_answers` leaves every other number out of the answers (the guess just made, the turns left):
a policy that copies a number from the latest answer then copies a candidate, never its last guess.

Problems: one per (level, secret). Each level is a range size and a turn limit (easiest first;
difficulty = the level's index); `high` (with an optional `max_turns`) is shorthand for one level
over [low, high]. Within a level the secrets are shuffled by a seeded RNG and the first
`heldout_fraction` of them are held out, so train and held-out never share a secret of a range.

With `range_shifts: S` > 1 each level's range also moves: a problem is (shift, secret) with the
range [low + shift, low + shift + size - 1] for shift in 0..S-1 (the prompt names it), and the
(shift, secret) pairs are what is shuffled and split. Train and held-out then share secret values
and ranges but never a pair, so guessing the secrets seen in training (which a policy learns first
when every problem shows it the same prompt) earns nothing on held-out problems: only a strategy
that reads the range and the answers does. `heldout_by: shift` holds out whole ranges instead (every
secret of a share of the shifts): what a policy learns about the train ranges' secrets then cannot
count on held-out problems at all, while the secret values still recur.
Ids: `guess_number/<split>/<index>` (with `@<fingerprint>` after the name under non-default params).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from dartflow.tasks.envs.parsing import excerpt, parse_integer
from dartflow.tasks.envs.problems import IndexedProblemSource, check_params, problem_id_prefix, stable_seed
from dartflow.tasks.envs.protocol import Problem, StepResult

NAME = "guess_number"
Feedback = Literal["higher", "lower", "correct"]


class GuessNumberLevel(BaseModel, extra="forbid"):
    range_size: int = Field(..., ge=2, le=100_000, description="How many integers the secret is drawn from.")
    max_turns: int = Field(..., ge=1, le=1_000, description="Guesses allowed.")


# Binary search needs 4, 7 and 10 guesses (binary_search_turns): one turn of slack at each level.
DEFAULT_LEVELS = [
    GuessNumberLevel(range_size=10, max_turns=5),
    GuessNumberLevel(range_size=100, max_turns=8),
    GuessNumberLevel(range_size=1000, max_turns=11),
]


def binary_search_turns(range_size: int) -> int:
    """Guesses that binary search needs in the worst case over `range_size` integers."""
    return math.ceil(math.log2(range_size + 1))


class GuessNumberParams(BaseModel, extra="forbid"):
    levels: list[GuessNumberLevel] = Field(
        default_factory=lambda: list(DEFAULT_LEVELS), min_length=1, description="Difficulty levels, easiest first."
    )
    low: int = Field(1, ge=-(10**9), le=10**9, description="Smallest possible secret.")
    high: int | None = Field(
        None, description="Shorthand for one level over [low, high] instead of `levels`: the largest possible secret."
    )
    max_turns: int | None = Field(
        None, ge=1, le=1_000, description="Guesses allowed with `high` (default: what binary search needs, plus one)."
    )
    turn_cost: float = Field(0.0, ge=0, le=1, description="Subtracted from the reward of every step.")
    invalid_action_penalty: float = Field(0.0, ge=0, le=1, description="Subtracted again for an invalid guess.")
    consistent_guess_bonus: float = Field(
        0.0, ge=0, le=1,
        description="Added for each guess inside the interval the earlier answers leave open (shaping; 0 = off).",
    )
    range_shifts: int = Field(
        1, ge=1, le=10_000,
        description="Positions of each level's range: problem ranges start at low, low+1, ... low+range_shifts-1 "
        "(1 = every problem over the same range).",
    )
    state_open_interval: bool = Field(
        False, description="Each answer also names the interval the answers so far leave open (easier variant)."
    )
    list_candidates_up_to: int = Field(
        0, ge=0, le=1_000,
        description="List every number still possible, one per line, in the intro and each answer whenever at "
        "most this many are (0 = never; easiest variant).",
    )
    quiet_answers: bool = Field(
        False,
        description="Answers carry no numbers besides the candidate list: not the guess (\"Too low.\"), not the "
        "turns left. With the list on, every number in the latest answer is then a possible secret.",
    )
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each level's secrets held out.")
    heldout_by: Literal["pair", "shift"] = Field(
        "pair",
        description="With range_shifts: hold out (shift, secret) pairs (pair), or whole shifts, every secret of "
        "heldout_fraction of the range positions (shift: held-out ranges are never trained on, so what a policy "
        "learns about the train ranges' secrets cannot count on held-out problems).",
    )
    seed: int = Field(0, ge=0, description="Seed of the secret shuffles (which secrets are held out).")

    @model_validator(mode="after")
    def _high_is_one_level(self) -> "GuessNumberParams":
        if self.heldout_by == "shift" and self.range_shifts < 2:
            raise ValueError("heldout_by: shift holds out range positions: it needs range_shifts >= 2")
        if self.high is None:
            if self.max_turns is not None:
                raise ValueError("max_turns goes with high (one level over [low, high]); levels set their own")
            return self
        if "levels" in self.model_fields_set:
            raise ValueError("give either high (one level over [low, high]) or levels, not both")
        range_size = self.high - self.low + 1
        if not 2 <= range_size <= 100_000:
            raise ValueError(f"high - low + 1 must be in [2, 100000], got {range_size} (low={self.low}, high={self.high})")
        max_turns = self.max_turns or binary_search_turns(range_size) + 1
        self.levels = [GuessNumberLevel(range_size=range_size, max_turns=max_turns)]
        return self

    def problem_defining(self) -> dict[str, Any]:
        """The params that change which problems exist (reward shaping does not; `high` is in levels).
        `range_shifts` only when set, so the ids of existing problem sets stay as they were."""
        include = {"levels", "low", "heldout_fraction", "seed"} | ({"range_shifts"} if self.range_shifts > 1 else set())
        include |= {"heldout_by"} if self.heldout_by != "pair" else set()
        return self.model_dump(include=include)


# ---- rules ---------------------------------------------------------------------------------------


def judge_guess(secret: int, guess: int) -> Feedback:
    """Where the secret lies relative to the guess."""
    if guess == secret:
        return "correct"
    return "higher" if secret > guess else "lower"


def step_reward(
    solved: bool, valid: bool, turn_cost: float, invalid_action_penalty: float,
    consistent: bool = False, consistent_guess_bonus: float = 0.0,
) -> float:
    return (
        (1.0 if solved else 0.0) - turn_cost - (0.0 if valid else invalid_action_penalty)
        + (consistent_guess_bonus if consistent else 0.0)
    )


@dataclass
class Episode:
    low: int
    high: int
    secret: int
    max_turns: int
    turns_used: int = 0
    solved: bool = False
    open_low: int | None = None  # the interval the answers so far leave open (None: [low, high])
    open_high: int | None = None

    def __post_init__(self) -> None:
        self.open_low = self.low if self.open_low is None else self.open_low
        self.open_high = self.high if self.open_high is None else self.open_high

    def could_be(self, guess: int) -> bool:
        """Whether `guess` is consistent with every answer given so far."""
        return self.open_low <= guess <= self.open_high

    @property
    def done(self) -> bool:
        return self.solved or self.turns_used >= self.max_turns

    @property
    def turns_left(self) -> int:
        return self.max_turns - self.turns_used


def _plural(count: int) -> str:
    return f"{count} guess" if count == 1 else f"{count} guesses"


def intro(episode: Episode, list_candidates_up_to: int = 0) -> str:
    text = (
        f"I am thinking of an integer between {episode.low} and {episode.high} (inclusive). "
        f"Find it in at most {_plural(episode.max_turns)}. After each guess I answer whether the number "
        f"is higher or lower. Reply with your guess only: one integer, e.g. {(episode.low + episode.high) // 2}."
    )
    return text + candidate_list(episode, list_candidates_up_to)


def candidate_list(episode: Episode, up_to: int) -> str:
    """The numbers still possible, one per line after a header ("" when more than `up_to` are).
    One per line so that each is the same token as a reply that is just that number."""
    count = episode.open_high - episode.open_low + 1
    if up_to <= 0 or count > up_to or episode.done:
        return ""
    return "\nStill possible:\n" + "\n".join(str(n) for n in range(episode.open_low, episode.open_high + 1))


def play_turn(
    episode: Episode, action_text: str, state_open_interval: bool = False, list_candidates_up_to: int = 0,
    quiet_answers: bool = False,
) -> tuple[str, bool, Feedback | None]:
    """Apply one action to the episode (mutates it); returns (observation, valid, feedback)."""
    episode.turns_used += 1
    guess = parse_integer(action_text)
    if guess is None or not episode.low <= guess <= episode.high:
        if quiet_answers:
            message = "Invalid guess: reply with one integer in the range."
        else:
            what = f"{excerpt(action_text)} is not a guess" if guess is None else f"{guess} is outside the range"
            message = f"Invalid guess: {what}. Reply with one integer between {episode.low} and {episode.high}."
        return _answer(message, episode, quiet_answers) + candidate_list(episode, list_candidates_up_to), False, None
    feedback = judge_guess(episode.secret, guess)
    if feedback == "higher":
        episode.open_low = max(episode.open_low, guess + 1)
    elif feedback == "lower":
        episode.open_high = min(episode.open_high, guess - 1)
    if feedback == "correct":
        episode.solved = True
        return f"Correct! The number is {episode.secret}. Solved in {_plural(episode.turns_used)}.", True, feedback
    if quiet_answers:
        message = f"Too {'low' if feedback == 'higher' else 'high'}: the number is {feedback}."
    else:
        message = f"{guess} is too {'low' if feedback == 'higher' else 'high'}: the number is {feedback}."
    if state_open_interval:
        message = f"{message[:-1]}: between {episode.open_low} and {episode.open_high}."
    return _answer(message, episode, quiet_answers) + candidate_list(episode, list_candidates_up_to), True, feedback


def _answer(message: str, episode: Episode, quiet: bool = False) -> str:
    """The answer with the turns left (not counted when quiet) or, at the end, the secret."""
    if episode.done:
        return f"{message} No guesses left: the number was {episode.secret}."
    return message if quiet else f"{message} {_plural(episode.turns_left)} left."


# ---- problems ------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _shuffled_offsets(seed: int, low: int, range_size: int) -> tuple[int, ...]:
    # Keyed on the range, not the level: two levels over the same range split its secrets alike.
    offsets = list(range(range_size))
    random.Random(stable_seed(NAME, seed, low, range_size)).shuffle(offsets)
    return tuple(offsets)


@lru_cache(maxsize=64)
def _shuffled_pairs(
    seed: int, low: int, range_size: int, range_shifts: int, by_shift: bool = False
) -> tuple[tuple[int, int], ...]:
    """(shift, secret offset) of every problem of a level, shuffled; one shift keeps _shuffled_offsets.
    `by_shift`: the shifts are shuffled and each one's pairs kept together (held out together)."""
    if by_shift:
        rng = random.Random(stable_seed(NAME, seed, low, range_size, range_shifts, "by_shift"))
        shifts = list(range(range_shifts))
        rng.shuffle(shifts)
        pairs = []
        for shift in shifts:
            offsets = list(range(range_size))
            rng.shuffle(offsets)
            pairs += [(shift, offset) for offset in offsets]
        return tuple(pairs)
    if range_shifts == 1:
        return tuple((0, offset) for offset in _shuffled_offsets(seed, low, range_size))
    pairs = [(shift, offset) for shift in range(range_shifts) for offset in range(range_size)]
    random.Random(stable_seed(NAME, seed, low, range_size, range_shifts)).shuffle(pairs)
    return tuple(pairs)


class GuessNumberProblems(IndexedProblemSource):
    def __init__(self, params: GuessNumberParams):
        self.params = params
        self.prefix = problem_id_prefix(NAME, params.problem_defining(), GuessNumberParams().problem_defining())
        # At least one problem of each level in each split, whatever the fraction.
        if params.heldout_by == "shift":  # whole shifts: at least one held out, at least one trained
            shifts = min(params.range_shifts - 1, max(1, round(params.range_shifts * params.heldout_fraction)))
            self._heldout_counts = [shifts * level.range_size for level in params.levels]
        else:
            self._heldout_counts = [
                min(self._level_size(level) - 1, max(1, round(self._level_size(level) * params.heldout_fraction)))
                for level in params.levels
            ]
        self._starts: dict[str, list[int]] = {}  # split -> first index of each level
        sizes = {}
        for split in ("train", "heldout"):
            counts = [self._level_count(split, level) for level in range(len(params.levels))]
            self._starts[split] = [sum(counts[:level]) for level in range(len(counts))]
            sizes[split] = sum(counts)
        super().__init__(sizes, self._build)

    def _level_size(self, level: GuessNumberLevel) -> int:
        return level.range_size * self.params.range_shifts

    def _level_count(self, split: str, level: int) -> int:
        heldout = self._heldout_counts[level]
        return heldout if split == "heldout" else self._level_size(self.params.levels[level]) - heldout

    def _build(self, split: str, index: int) -> Problem:
        level = bisect.bisect_right(self._starts[split], index) - 1
        position = index - self._starts[split][level]
        spec = self.params.levels[level]
        if split == "train":
            position += self._heldout_counts[level]
        shift, offset = _shuffled_pairs(
            self.params.seed, self.params.low, spec.range_size, self.params.range_shifts, self.params.heldout_by == "shift"
        )[position]
        low = self.params.low + shift
        return Problem(
            problem_id=f"{self.prefix}/{split}/{index}",
            environment=NAME,
            split=split,
            difficulty=float(level),
            params={
                "low": low,
                "high": low + spec.range_size - 1,
                "secret": low + offset,
                "max_turns": spec.max_turns,
                "level": level,
            },
            max_turns=spec.max_turns,
        )


# ---- environment ---------------------------------------------------------------------------------


class GuessNumberEnv:
    name: ClassVar[str] = NAME
    action_format: ClassVar[str] = (
        "One integer: ASCII digits with an optional sign, optionally surrounded by whitespace and followed "
        "by one period, e.g. `42`. Anything else (words, several numbers, out of range) is an invalid "
        "guess: it uses up a turn and says what was wrong."
    )

    def __init__(self, **params: Any):
        self.params = self.check_params(params)
        self._episode: Episode | None = None

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> GuessNumberParams:
        return check_params(GuessNumberParams, NAME, params)

    @classmethod
    def problem_source(cls, **params: Any) -> GuessNumberProblems:
        return GuessNumberProblems(cls.check_params(params))

    def reset(self, problem: Problem) -> str:
        p = problem.params
        if not p["low"] <= p["secret"] <= p["high"] or p["max_turns"] < 1:
            raise ValueError(f"{problem.problem_id}: inconsistent problem params {p}")
        self._episode = Episode(low=p["low"], high=p["high"], secret=p["secret"], max_turns=p["max_turns"])
        return intro(self._episode, self.params.list_candidates_up_to)

    def step(self, action_text: str) -> StepResult:
        episode = self._episode
        if episode is None or episode.done:
            info = {"invalid_action": True, "episode_over": True, "success": bool(episode and episode.solved)}
            return StepResult("The episode is over: no more guesses are taken.", 0.0, True, info)
        guess = parse_integer(action_text)
        consistent = guess is not None and episode.could_be(guess)  # judged before this answer narrows it
        observation, valid, feedback = play_turn(
            episode, action_text, self.params.state_open_interval, self.params.list_candidates_up_to,
            self.params.quiet_answers,
        )
        reward = step_reward(
            episode.solved, valid, self.params.turn_cost, self.params.invalid_action_penalty,
            consistent, self.params.consistent_guess_bonus,
        )
        info: dict[str, Any] = {"invalid_action": not valid, "feedback": feedback, "turn": episode.turns_used}
        if episode.done:
            info["success"] = episode.solved
        return StepResult(observation, reward, episode.done, info)

    def close(self) -> None:
        self._episode = None
