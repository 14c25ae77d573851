"""Shared pieces of problem sources: stable seeds, split assignment, ids, params checking.

Everything here is a pure function of its arguments (no process state, no hash randomisation), so a
problem id means the same problem on every machine and in every worker process.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dartflow.tasks.envs.protocol import SPLITS, Problem

ParamsT = TypeVar("ParamsT", bound=BaseModel)


class EnvironmentConfigError(ValueError):
    """A configured environment cannot be built: unknown name, bad params, or not usable here.

    A ValueError so that pydantic validators turn it into a config validation error as is.
    """


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from JSON-able parts; the same on every run and machine (unlike hash())."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def params_fingerprint(params: Mapping[str, Any]) -> str:
    """8 hex characters that change when the problem-defining params change."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def problem_id_prefix(name: str, defining_params: Mapping[str, Any], default_params: Mapping[str, Any]) -> str:
    """`name` under default params, `name@<fingerprint>` otherwise.

    Ids stay short and readable for the common case, and two configs that define different problems
    never share an id (the trajectory store and curation key their statistics on it).
    """
    if dict(defining_params) == dict(default_params):
        return name
    return f"{name}@{params_fingerprint(defining_params)}"


def split_of(key: str, heldout_fraction: float) -> str:
    """The split a problem's content belongs to: a fixed function of the content, not of its index.

    Two problems with the same content land in the same split, so train and held-out never share
    one even when the space of problems is small.
    """
    bucket = stable_seed("split", key) / 2**64
    return "heldout" if bucket < heldout_fraction else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def check_params(model: type[ParamsT], environment: str, params: Mapping[str, Any]) -> ParamsT:
    """Validate `params` with a pydantic model; errors name the environment and each bad param."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as error:
        known = ", ".join(sorted(model.model_fields))
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown parameter '{where}' (known parameters: {known})")
            elif not where:  # a check across params (a model validator) names them in its message
                problems.append(message)
            else:
                problems.append(f"parameter '{where}': {message} (got {item.get('input')!r})")
        raise EnvironmentConfigError(f"{environment}: " + "; ".join(problems)) from None


class IndexedProblemSource:
    """A ProblemSource over two finite, indexed splits: `build(split, index)` makes each problem.

    `sample` draws an index uniformly; `heldout(count)` is the first `count` held-out problems.
    """

    def __init__(self, sizes: Mapping[str, int], build: Callable[[str, int], Problem]):
        for split in SPLITS:
            if sizes.get(split, 0) < 1:
                raise EnvironmentConfigError(f"the {split} split has no problems (sizes: {dict(sizes)})")
        self._sizes = dict(sizes)
        self._build = build

    def size(self, split: str) -> int:
        check_split(split)
        return self._sizes[split]

    def problem(self, split: str, index: int) -> Problem:
        check_split(split)
        if not 0 <= index < self._sizes[split]:
            raise IndexError(f"{split} problem index {index} out of range [0, {self._sizes[split]})")
        return self._build(split, index)

    def sample(self, rng: random.Random, split: str = "train") -> Problem:
        check_split(split)
        return self._build(split, rng.randrange(self._sizes[split]))

    def heldout(self, count: int) -> list[Problem]:
        return [self._build("heldout", index) for index in range(min(count, self._sizes["heldout"]))]
