"""`reasoning_gym:<task>`: any reasoning_gym procedural dataset as a single-turn environment.

The question is the observation; the action is scored by the dataset's own
`score_answer(answer=, entry=)` (0..1), which is the reward; `success` means a score of 1. What is
scored is the last `<answer>...</answer>` block of the action, else the whole action, stripped of
surrounding whitespace; an empty answer scores 0. The system prompt asks for the tags
(`action_format`), and `reference_action()` is the dataset's reference answer in them (the BC
warm-up's demonstrations; None for tasks whose items carry no answer, e.g. rush_hour).

Params: the dataset's own config fields (its difficulty knobs, e.g. `min_terms` for
basic_arithmetic), passed through to `reasoning_gym.create_dataset` and checked against the
dataset's config dataclass, plus dartflow's:
    seed (0), train_size (10_000), heldout_size (200): each split is one dataset of that size;
    level (0.0): the difficulty these problems carry (to order several configs of one task; not
        `difficulty`, which some datasets use for their own knob).
Train and held-out are datasets with seeds 10**9 apart (reasoning_gym draws item i of a dataset from
Random(seed + i)), so their generator seeds never overlap; a task with a small question space can
still produce the same question in both.

reasoning_gym is imported on first use, never by importing this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from functools import lru_cache
from typing import Any, ClassVar

from dartflow.tasks.envs.parsing import excerpt
from dartflow.tasks.envs.problems import EnvironmentConfigError, IndexedProblemSource, problem_id_prefix
from dartflow.tasks.envs.protocol import Problem, StepResult

PREFIX = "reasoning_gym"
HELDOUT_SEED_OFFSET = 10**9
# dartflow's own params: what the two splits are; everything else belongs to the dataset config.
OWN_DEFAULTS: dict[str, Any] = {"seed": 0, "train_size": 10_000, "heldout_size": 200, "level": 0.0}
_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)


def extract_answer(action_text: str) -> str:
    """The text that gets scored: the last `<answer>...</answer>` block if any, else the whole action.

    Both stripped of surrounding whitespace (the tag convention is reasoning_gym's own prompts').
    """
    blocks = _ANSWER_TAG.findall(action_text)
    return (blocks[-1] if blocks else action_text).strip()


def answer_action(answer: str) -> str:
    """The action that submits `answer` in the format `extract_answer` scores."""
    return f"<answer>{answer}</answer>"


def _datasets() -> dict[str, tuple[type, type]]:
    from reasoning_gym.factory import DATASETS

    return DATASETS


def _split_params(task: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dartflow's own params with defaults, the dataset config params); raises naming a bad one."""
    name = f"{PREFIX}:{task}"
    datasets = _datasets()
    if task not in datasets:
        close = difflib.get_close_matches(task, list(datasets), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise EnvironmentConfigError(
            f"{name}: unknown reasoning_gym task '{task}'.{hint} ({len(datasets)} tasks: reasoning_gym.factory.DATASETS)"
        )
    config_fields = {field.name for field in dataclasses.fields(datasets[task][1])} - {"seed", "size"}
    own, config = dict(OWN_DEFAULTS), {}
    for key, value in params.items():
        if key in OWN_DEFAULTS:
            own[key] = value
        elif key == "size":
            raise EnvironmentConfigError(f"{name}: parameter 'size': use 'train_size' and 'heldout_size' instead")
        elif key in config_fields:
            config[key] = value
        else:
            raise EnvironmentConfigError(
                f"{name}: unknown parameter '{key}'. The task's parameters: {', '.join(sorted(config_fields))}; "
                f"dartflow's: {', '.join(OWN_DEFAULTS)}, latency"
            )
    for key in ("seed", "train_size", "heldout_size"):
        low = 0 if key == "seed" else 1
        if not isinstance(own[key], int) or isinstance(own[key], bool) or own[key] < low:
            raise EnvironmentConfigError(f"{name}: parameter '{key}' must be an integer >= {low}, got {own[key]!r}")
    if not isinstance(own["level"], (int, float)) or isinstance(own["level"], bool):
        raise EnvironmentConfigError(f"{name}: parameter 'level' must be a number, got {own['level']!r}")
    return own, config


@lru_cache(maxsize=32)
def _dataset(task: str, config_json: str, seed: int, size: int) -> Any:
    # Cached: some datasets precompute at creation (acre: ~1.6 s for 10k items).
    import reasoning_gym

    return reasoning_gym.create_dataset(task, seed=seed, size=size, **json.loads(config_json))


def _config_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


class ReasoningGymProblems(IndexedProblemSource):
    def __init__(self, task: str, own: dict[str, Any], config: dict[str, Any]):
        self.task, self.own, self.config = task, own, config
        name = f"{PREFIX}:{task}"
        self.prefix = problem_id_prefix(name, {**own, "config": config}, {**OWN_DEFAULTS, "config": {}})
        super().__init__({"train": own["train_size"], "heldout": own["heldout_size"]}, self._build)

    def _build(self, split: str, index: int) -> Problem:
        seed = self.own["seed"] + (HELDOUT_SEED_OFFSET if split == "heldout" else 0)
        size = self.own[f"{split}_size"]
        return Problem(
            problem_id=f"{self.prefix}/{split}/{index}",
            environment=f"{PREFIX}:{self.task}",
            split=split,
            difficulty=float(self.own["level"]),
            params={"task": self.task, "config": self.config, "seed": seed, "size": size, "index": index},
            max_turns=1,
        )


class ReasoningGymEnv:
    name: ClassVar[str] = PREFIX
    # A real instruct model reads this in its system message (short: a 135M model reads it too); untagged
    # prose ("The answer is 18.") is scored whole and fails. Scoring details: the module docstring.
    action_format: ClassVar[str] = (
        "Your final answer inside <answer></answer> tags, in the form the question asks for, e.g. "
        "<answer>42</answer>. Be concise: only the last <answer> block is scored."
    )

    def __init__(self, task: str, config: dict[str, Any]):
        self.task, self.config = task, config
        self._dataset: Any = None
        self._entry: dict[str, Any] | None = None

    def reset(self, problem: Problem) -> str:
        p = problem.params
        self._dataset = _dataset(p["task"], _config_json(p["config"]), p["seed"], p["size"])
        self._entry = self._dataset[p["index"]]
        return str(self._entry["question"])

    def reference_action(self) -> str | None:
        """The dataset's reference answer in the scored format; None outside an episode or without one."""
        answer = None if self._entry is None else self._entry.get("answer")
        return None if answer is None else answer_action(str(answer))

    def step(self, action_text: str) -> StepResult:
        entry = self._entry
        if entry is None:
            info = {"invalid_action": True, "episode_over": True, "success": False}
            return StepResult("The episode is over: one answer per problem.", 0.0, True, info)
        self._entry = None
        answer = extract_answer(action_text)
        if not answer:
            return StepResult("Empty answer: scored 0.", 0.0, True, {"invalid_action": True, "success": False})
        try:
            score = float(self._dataset.score_answer(answer=answer, entry=entry))
        except Exception as error:  # a scorer that chokes on odd text must not end the worker
            info = {"invalid_action": True, "success": False, "score_error": f"{type(error).__name__}: {error}"}
            return StepResult(f"Could not score {excerpt(answer)}: scored 0.", 0.0, True, info)
        info = {"invalid_action": False, "success": score >= 1.0, "expected_answer": str(entry.get("answer"))}
        feedback = "Correct." if score >= 1.0 else f"Scored {score:.2f} of 1."
        return StepResult(feedback, score, True, info)

    def close(self) -> None:
        self._dataset = self._entry = None


class ReasoningGymFamily:
    def check(self, task: str, params: dict[str, Any]) -> None:
        own, config = _split_params(task, params)
        try:  # the dataset's own validation (asserts) and one item: cheap, and catches bad values
            _dataset(task, _config_json(config), own["seed"], 1)[0]
        except Exception as error:
            message = str(error) or type(error).__name__
            raise EnvironmentConfigError(f"{PREFIX}:{task}: bad params {config}: {message}") from None

    def make_environment(self, task: str, params: dict[str, Any]) -> ReasoningGymEnv:
        _, config = _split_params(task, params)
        return ReasoningGymEnv(task, config)

    def make_problem_source(self, task: str, params: dict[str, Any]) -> ReasoningGymProblems:
        own, config = _split_params(task, params)
        return ReasoningGymProblems(task, own, config)


FAMILY = ReasoningGymFamily()
