"""`miniwob:<task>`: the MiniWoB++ web tasks (PyPI `miniwob`, Farama) in a real headless Chromium.

`<task>` is any task miniwob registers (`click-button`, `enter-text`, `book-flight`, ...; 128 in 1.1.0).
Observation: the task's instruction and its page as text (see miniwob_page.py), after every step.
Actions: `click(ref)`, `type(ref, "text")`, `press(key)`, `click_xy(x, y)` (see miniwob_actions.py).

Reward: MiniWoB's own checker ends the episode with a raw reward in [-1, 1] (its time penalty left
out: how long the policy thinks is the engine's load, not the policy). `success` means raw > 0.
With `reward: success` (default) the final step earns 1.0 for a success, else 0.0; with
`reward: raw` it earns the raw reward (partial credit where the task gives it; < 0 for a failure).
Earlier steps earn 0. An invalid action (unparseable, a ref not on the page, a point off the page)
is not carried out: the observation says what was wrong and shows the page again, the step costs
`invalid_action_penalty`, and it uses a turn. The episode ends when the checker says so or after
`max_turns` actions (then reward 0, not a success).

MiniWoB ends an episode after 10-30 s of wall-clock time (per task); by default that limit is
lifted, since a policy's time per turn depends on the engine's load; `time_limit_s` sets one again.

Problems: one per (task, seed). Train problem i plays seed `seed + i`, held-out problem i seed
`seed + 10**9 + i` in MiniWoB's "test" data mode (read by a few tasks: the -transfer ones and the
email -nl ones, whose test pages differ by design). Many tasks have a small space of pages, so a
held-out page can equal a train page. Ids: `miniwob:<task>/<split>/<index>` (`@<fingerprint>`
after the name when seed, max_turns or time_limit_s differ from the defaults). Difficulty: the
number of actions a solution typically takes (SOLUTION_STEPS; DEFAULT_SOLUTION_STEPS for a task
not in it), or the `difficulty` param.

Browser: one headless Chromium per environment instance, started at its first reset and reused
by every later reset; see miniwob_browser.py for how it ends. A cluster worker hosts one instance
per slot, so `cluster.slots_per_worker` is also the number of browsers per worker.
"""

from __future__ import annotations

import difflib
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Iterator, Literal

from pydantic import BaseModel, Field

from dartflow.tasks.envs.miniwob_actions import (
    MAX_TYPED_CHARS,
    Click,
    ClickXY,
    InvalidAction,
    PageAction,
    Press,
    TypeText,
    parse_action,
)
from dartflow.tasks.envs.miniwob_browser import BrowserError, BrowserPaths, find_browser, miniwob_page_class
from dartflow.tasks.envs.miniwob_page import page_elements, render_page
from dartflow.tasks.envs.problems import (
    EnvironmentConfigError,
    IndexedProblemSource,
    check_params,
    problem_id_prefix,
)
from dartflow.tasks.envs.protocol import Problem, StepResult

PREFIX = "miniwob"
TESTED_VERSION = "1.1.0"
HELDOUT_SEED_OFFSET = 10**9
DATA_MODES = {"train": "train", "heldout": "test"}
# MiniWoB's own limits are 7-30 s; a day stands for "none" (setTimeout needs a finite delay < 2**31 ms).
_NO_TIME_LIMIT_MS = 86_400_000

# Actions a solution typically takes in this grammar (a check box per target, a field per text, the
# submit button): exact for the scripted tasks with a fixed solution length (miniwob_demos.py), an
# estimate elsewhere (click-checkboxes takes 1-6 actions, 3 on average).
SOLUTION_STEPS: dict[str, int] = {
    **dict.fromkeys(
        ["click-test", "click-test-2", "click-test-transfer", "click-button", "click-link", "click-dialog",
         "click-dialog-2", "click-widget", "click-color", "click-shape", "click-tab", "focus-text",
         "focus-text-2", "identify-shape", "grid-coordinate", "count-shape", "count-sides", "unicode-test",
         "find-greatest"], 1),
    **dict.fromkeys(
        ["click-button-sequence", "click-option", "click-tab-2", "click-tab-2-easy", "click-tab-2-medium",
         "click-collapsible", "click-collapsible-nodelay", "click-pie", "click-pie-nodelay", "choose-list",
         "enter-text", "enter-text-2", "enter-text-dynamic", "enter-date", "enter-time", "find-word",
         "read-table", "simple-algebra", "simple-arithmetic", "text-transform", "visual-addition",
         "social-media", "odd-or-even", "click-menu", "sign-agreement"], 2),
    **dict.fromkeys(
        ["click-checkboxes", "click-checkboxes-soft", "click-checkboxes-transfer", "click-tab-2-hard",
         "click-collapsible-2", "click-collapsible-2-nodelay", "enter-password", "login-user",
         "search-engine", "use-autocomplete", "use-autocomplete-nodelay", "navigate-tree", "copy-paste",
         "copy-paste-2", "read-table-2", "click-menu-2", "guess-number", "click-shades", "use-spinner",
         "social-media-some", "click-scroll-list"], 3),
    **dict.fromkeys(
        ["login-user-popup", "email-inbox", "email-inbox-delete", "email-inbox-important",
         "email-inbox-noscroll", "email-inbox-forward", "email-inbox-forward-nl", "email-inbox-forward-nl-turk",
         "email-inbox-nl-turk", "email-inbox-reply", "email-inbox-star-reply", "social-media-all",
         "choose-date", "choose-date-easy", "choose-date-medium", "choose-date-nodelay", "form-sequence",
         "form-sequence-2", "form-sequence-3", "tic-tac-toe", "multi-layouts", "multi-orderings",
         "number-checkboxes", "phone-book", "terminal"], 4),
    **dict.fromkeys(["click-checkboxes-large", "book-flight", "book-flight-nodelay", "buy-ticket", "order-food"], 8),
}
DEFAULT_SOLUTION_STEPS = 4

ACTION_FORMAT = (
    'One action per reply, one of: click(ref) clicks the element shown as [ref] on the page; '
    'type(ref, "text") clicks that element, then types the text (after any text already there); '
    "press(key) presses a key: Enter, Tab, Backspace, Delete, Escape, Space, ArrowUp, ArrowDown, "
    "ArrowLeft, ArrowRight, Home, End, PageUp, PageDown or one character, with modifiers as in "
    "press(ctrl+a); click_xy(x, y) clicks at page coordinates (the @x,y of the page). Refs are the "
    "numbers in brackets. An action that cannot be carried out does nothing and the answer says why."
)


class MiniWoBParams(BaseModel, extra="forbid"):
    seed: int = Field(0, ge=0, le=10**9, description="First train seed; held-out seeds start at seed + 10**9.")
    train_size: int = Field(100_000, ge=1, le=10**9, description="Train problems (seeds).")
    heldout_size: int = Field(200, ge=1, le=10**9, description="Held-out problems (seeds).")
    max_turns: int = Field(10, ge=1, le=1_000, description="Actions per episode, valid or not.")
    reward: Literal["success", "raw"] = Field(
        "success", description="success: 1.0 when the checker's raw reward is > 0, else 0.0; raw: that raw reward."
    )
    invalid_action_penalty: float = Field(0.1, ge=0, le=1, description="Subtracted for an action not carried out.")
    max_observation_chars: int = Field(
        2000, ge=200, le=200_000, description="Budget of the page rendering (instruction included), in characters."
    )
    time_limit_s: float | None = Field(
        None, gt=0, le=86_400, description="MiniWoB's wall-clock limit per episode (None: lifted)."
    )
    difficulty: float | None = Field(None, description="The problems' difficulty (None: SOLUTION_STEPS of the task).")
    command_timeout_s: float = Field(
        20.0, gt=0, le=3_600, description="A browser command slower than this counts as a hung browser."
    )

    def problem_defining(self) -> dict[str, Any]:
        return self.model_dump(include={"seed", "max_turns", "time_limit_s"})


def solution_steps(task: str) -> int:
    return SOLUTION_STEPS.get(task, DEFAULT_SOLUTION_STEPS)


def checker_reward(raw_reward: float, mode: str) -> tuple[float, bool]:
    """(reward of the final step, success) from MiniWoB's raw reward."""
    success = raw_reward > 0
    return (raw_reward if mode == "raw" else float(success)), success


@lru_cache(maxsize=1)
def available_tasks() -> tuple[str, ...]:
    """Every task miniwob registers with gymnasium (`miniwob/<task>-v1`), sorted."""
    try:
        import gymnasium
        import miniwob  # noqa: F401  (registers its environments)
    except ImportError as error:
        raise EnvironmentConfigError(f"{PREFIX}: the package miniwob cannot be imported: {error}") from None
    from importlib import metadata

    version = metadata.version("miniwob")
    if version != TESTED_VERSION:
        warnings.warn(f"miniwob {version} is installed; dartflow's miniwob:<task> was checked with {TESTED_VERSION}")
    names = [key.removeprefix("miniwob/") for key in gymnasium.registry if key.startswith("miniwob/")]
    return tuple(sorted(name.rsplit("-v", 1)[0] for name in names))


def check_task(task: str) -> str:
    tasks = available_tasks()
    if task in tasks:
        return task
    close = difflib.get_close_matches(task, tasks, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise EnvironmentConfigError(
        f"{PREFIX}:{task}: unknown MiniWoB task '{task}'.{hint} "
        f"({len(tasks)} tasks: dartflow.tasks.envs.miniwob_family.available_tasks())"
    )


def _params(task: str, params: dict[str, Any]) -> MiniWoBParams:
    return check_params(MiniWoBParams, f"{PREFIX}:{task}", params)


class MiniWoBProblems(IndexedProblemSource):
    def __init__(self, task: str, params: MiniWoBParams):
        self.task, self.params = task, params
        defaults = MiniWoBParams().problem_defining()
        self.prefix = problem_id_prefix(f"{PREFIX}:{task}", params.problem_defining(), defaults)
        self.difficulty = float(solution_steps(task) if params.difficulty is None else params.difficulty)
        super().__init__({"train": params.train_size, "heldout": params.heldout_size}, self._build)

    def _build(self, split: str, index: int) -> Problem:
        seed = self.params.seed + (HELDOUT_SEED_OFFSET if split == "heldout" else 0) + index
        return Problem(
            problem_id=f"{self.prefix}/{split}/{index}",
            environment=f"{PREFIX}:{self.task}",
            split=split,
            difficulty=self.difficulty,
            params={"task": self.task, "seed": seed, "data_mode": DATA_MODES[split]},
            max_turns=self.params.max_turns,
        )


@dataclass
class _Episode:
    problem_id: str
    max_turns: int
    turns: int = 0
    done: bool = False
    success: bool = False
    page_text: str = ""  # the latest rendering, shown again after an invalid action
    refs: frozenset[int] = frozenset()  # the elements on the page now


class MiniWoBEnv:
    name: ClassVar[str] = PREFIX
    action_format: ClassVar[str] = ACTION_FORMAT

    def __init__(self, task: str, params: MiniWoBParams, paths: BrowserPaths):
        self.task, self.params, self.paths = task, params, paths
        self._page: Any = None  # miniwob's gym environment on our browser, from the first reset on
        self._broken = False
        self._episode: _Episode | None = None

    # ---- protocol ----

    def reset(self, problem: Problem) -> str:
        task = problem.params.get("task")
        if task != self.task:
            raise ValueError(f"{problem.problem_id} is of miniwob:{task}; this instance plays miniwob:{self.task}")
        if self._page is None or self._broken:
            self._start_browser()
        limit_s = self.params.time_limit_s
        time_limit_ms = _NO_TIME_LIMIT_MS if limit_s is None else round(limit_s * 1000)
        with self._browser_call(f"the reset of {problem.problem_id}"):
            self._page.instance.driver.execute_script(f"core.EPISODE_MAX_TIME = {time_limit_ms};")
            self._page.set_data_mode(problem.params["data_mode"])
            observation, _ = self._page.reset(seed=problem.params["seed"], options={"record_screenshots": False})
        self._episode = _Episode(problem.problem_id, problem.max_turns or self.params.max_turns)
        return self._show(self._episode, observation)

    def step(self, action_text: str) -> StepResult:
        episode = self._episode
        if episode is None or episode.done:
            info = {"invalid_action": True, "episode_over": True, "success": bool(episode and episode.success)}
            return StepResult("The episode is over: no more actions are taken.", 0.0, True, info)
        episode.turns += 1
        try:
            action = parse_action(action_text)
            self._check_on_page(action)
        except InvalidAction as error:
            return self._invalid(episode, str(error))
        with self._browser_call(f"step {episode.turns} of {episode.problem_id}"):
            observation, _, terminated, truncated, metadata = self._page.step(self._miniwob_action(action))
        if terminated or truncated or metadata.get("done"):
            return self._checked(episode, metadata)
        if episode.turns >= episode.max_turns:
            return self._out_of_turns(episode, 0.0, False)
        return StepResult(self._show(episode, observation), 0.0, False, {"invalid_action": False, "turn": episode.turns})

    def close(self) -> None:
        page, self._page, self._episode = self._page, None, None
        if page is not None:
            page.instance.close(graceful=not self._broken)

    # ---- steps ----

    def _invalid(self, episode: _Episode, message: str) -> StepResult:
        if episode.turns >= episode.max_turns:
            penalty = -self.params.invalid_action_penalty
            return self._out_of_turns(episode, penalty, True, f"Invalid action: {message}. ")
        observation = f"Invalid action: {message}. Nothing was done.\n{episode.page_text}"
        info = {"invalid_action": True, "turn": episode.turns}
        return StepResult(observation, -self.params.invalid_action_penalty, False, info)

    def _out_of_turns(self, episode: _Episode, reward: float, invalid: bool, prefix: str = "") -> StepResult:
        episode.done = True
        observation = f"{prefix}Out of turns: the task was not completed in {episode.max_turns} actions."
        info = {"invalid_action": invalid, "turn": episode.turns, "success": False}
        return StepResult(observation, reward, True, info)

    def _checked(self, episode: _Episode, metadata: dict[str, Any]) -> StepResult:
        episode.done = True
        raw_reward = float(metadata.get("raw_reward") or 0.0)
        reward, episode.success = checker_reward(raw_reward, self.params.reward)
        outcome = "Task completed" if episode.success else "Task failed"
        info: dict[str, Any] = {
            "invalid_action": False, "turn": episode.turns, "success": episode.success, "raw_reward": raw_reward,
        }
        reason = metadata.get("reason")
        if reason not in (None, ""):
            info["reason"] = str(reason)
        detail = f" ({info['reason']})" if "reason" in info and not episode.success else ""
        return StepResult(f"{outcome}: MiniWoB's checker gave reward {raw_reward:.2f}{detail}.", reward, True, info)

    def _show(self, episode: _Episode, observation: dict[str, Any]) -> str:
        elements = page_elements(observation["dom_elements"])
        episode.page_text = render_page(str(observation["utterance"]), elements, self.params.max_observation_chars)
        episode.refs = frozenset(element.ref for element in elements if element.ref > 0)
        return episode.page_text

    def _check_on_page(self, action: PageAction) -> None:
        if isinstance(action, (Click, TypeText)) and action.ref not in self._episode.refs:
            raise InvalidAction(f"there is no element [{action.ref}] on the page")
        if isinstance(action, ClickXY):
            width, height = self._page.instance.inner_width, self._page.instance.inner_height
            if not (0 <= action.x < width and 0 <= action.y < height):
                where = f"({action.x:g}, {action.y:g})"
                raise InvalidAction(f"{where} is off the page (0 <= x < {width}, 0 <= y < {height})")

    def _miniwob_action(self, action: PageAction) -> dict[str, Any]:
        from miniwob.action import ActionTypes

        create = self._page.create_action
        if isinstance(action, Click):
            return create(ActionTypes.CLICK_ELEMENT, ref=action.ref)
        if isinstance(action, TypeText):
            return create(ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT, ref=action.ref, text=action.text)
        if isinstance(action, Press):
            return create(ActionTypes.PRESS_KEY, key=_key_indexes()[action.key])
        import numpy as np

        return create(ActionTypes.CLICK_COORDS, coords=np.array([action.x, action.y], dtype=np.float32))

    # ---- browser ----

    def _start_browser(self) -> None:
        if self._page is not None:
            self.close()
        self._broken = False
        with self._browser_call("the browser start"):
            self._page = miniwob_page_class()(
                self.task, self.paths, self.params.command_timeout_s, action_space_config=_action_space()
            )

    @contextmanager
    def _browser_call(self, what: str) -> Iterator[None]:
        try:
            yield
        except BrowserError:
            self._broken = True
            raise
        except Exception as error:
            self._broken = True
            message = f"{PREFIX}:{self.task}: the browser failed during {what}: {type(error).__name__}: {error}"
            raise BrowserError(message) from error


@lru_cache(maxsize=1)
def _key_indexes() -> dict[str, int]:
    from miniwob.constants import ALL_POSSIBLE_KEYS

    return {key: index for index, key in enumerate(ALL_POSSIBLE_KEYS)}


def _action_space() -> Any:
    from miniwob.action import ActionSpaceConfig, ActionTypes
    from miniwob.constants import ALL_POSSIBLE_KEYS

    return ActionSpaceConfig(
        action_types=[ActionTypes.CLICK_ELEMENT, ActionTypes.CLICK_COORDS, ActionTypes.PRESS_KEY,
                      ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT],
        allowed_keys=ALL_POSSIBLE_KEYS,
        text_max_len=MAX_TYPED_CHARS,
    )


class MiniWoBFamily:
    def check(self, task: str, params: dict[str, Any]) -> None:
        _params(task, params)
        check_task(task)
        find_browser()

    def make_environment(self, task: str, params: dict[str, Any]) -> MiniWoBEnv:
        checked = _params(task, params)
        return MiniWoBEnv(check_task(task), checked, find_browser())

    def make_problem_source(self, task: str, params: dict[str, Any]) -> MiniWoBProblems:
        return MiniWoBProblems(check_task(task), _params(task, params))


FAMILY = MiniWoBFamily()
