"""Environments by name: what the run config's `environments: [{name, weight, params}]` refers to.

A name is one of
- a registered name: `guess_number`, `arithmetic`, or one a user registered with
  `@register_environment("my_env")`;
- a family and a task: `reasoning_gym:<task>` (any reasoning_gym dataset), `textarena:<game>`
  (its single-player games that run offline here), `miniwob:<task>` (MiniWoB++ web tasks in a
  headless Chromium);
- an import path `package.module:ClassName`, so a user's environment needs no edit to dartflow.

An environment class (built-in or a user's) provides
    name: ClassVar[str]; action_format: ClassVar[str]
    __init__(self, **params)                           # params from the config, `latency` removed
    @classmethod problem_source(cls, **params) -> ProblemSource
    reset(problem) -> str; step(action_text) -> StepResult; close() -> None
    @classmethod check_params(cls, params: dict) -> Any   # optional: raise ValueError naming the param
    reference_action() -> str | None                    # optional: the action solving the current state (BC demonstrations)
Without `check_params`, params are checked against the signatures of `__init__` and `problem_source`.

The params key `latency` is handled here for every environment (see latency.py).
Nothing in this module imports reasoning_gym, textarena or miniwob: families load on first use.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from dartflow.tasks.envs.problems import EnvironmentConfigError
from dartflow.tasks.envs.protocol import Environment, Problem, ProblemSource

__all__ = [
    "EnvironmentConfigError",
    "EnvironmentFamily",
    "check_environment",
    "environment_import_path",
    "make_environment",
    "make_problem_source",
    "register_environment",
    "register_family",
    "registered_environments",
]

LATENCY_KEY = "latency"
_REQUIRED_MEMBERS = ("name", "action_format", "reset", "step", "close", "problem_source")

ClassT = TypeVar("ClassT", bound=type)


class EnvironmentFamily(Protocol):
    """Environments named `prefix:<task>`: one object checks and builds all of them."""

    def check(self, task: str, params: dict[str, Any]) -> None: ...

    def make_environment(self, task: str, params: dict[str, Any]) -> Environment: ...

    def make_problem_source(self, task: str, params: dict[str, Any]) -> ProblemSource: ...


# Built-ins as "module:attribute" strings, imported on first use.
_CLASSES: dict[str, type | str] = {
    "guess_number": "dartflow.tasks.envs.guess_number:GuessNumberEnv",
    "arithmetic": "dartflow.tasks.envs.arithmetic:ArithmeticEnv",
}
_FAMILIES: dict[str, EnvironmentFamily | str] = {
    "reasoning_gym": "dartflow.tasks.envs.reasoning_gym_family:FAMILY",
    "textarena": "dartflow.tasks.envs.textarena_family:FAMILY",
    "miniwob": "dartflow.tasks.envs.miniwob_family:FAMILY",
}
_BUILTIN_NAMES = frozenset(_CLASSES) | frozenset(_FAMILIES)


def register_environment(name: str) -> Callable[[ClassT], ClassT]:
    """Class decorator: make `name` refer to this environment class in run configs.

    Registration lives in the process that ran the decorator; a spawned worker knows the name only
    if it imports the same module. `environment_import_path(name)` gives a name that works anywhere.
    """

    def register(cls: ClassT) -> ClassT:
        if name in _BUILTIN_NAMES:
            raise ValueError(f"'{name}' is a built-in environment name and cannot be registered again")
        missing = _missing_members(cls)
        if missing:
            raise TypeError(f"{cls.__qualname__} is not an environment class: it lacks {', '.join(missing)}")
        existing = _CLASSES.get(name)
        if existing is not None and not _same_class(existing, cls):
            raise ValueError(f"environment '{name}' is already registered to {existing!r}")
        _CLASSES[name] = cls
        return cls

    return register


def register_family(prefix: str, family: EnvironmentFamily) -> None:
    """Make `prefix:<task>` names refer to `family` (e.g. an adapter over another benchmark suite)."""
    if prefix in _BUILTIN_NAMES:
        raise ValueError(f"'{prefix}' is a built-in environment family and cannot be registered again")
    _FAMILIES[prefix] = family


def registered_environments() -> list[str]:
    """Every name a config can use, families as `prefix:<task>`, sorted; import paths not listed."""
    return sorted(_CLASSES) + sorted(f"{prefix}:<task>" for prefix in _FAMILIES)


def check_environment(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Cheap config-time check; raises EnvironmentConfigError saying what is wrong and what is allowed."""
    builder, params = _resolve(name), dict(params or {})
    latency = params.pop(LATENCY_KEY, None)
    if latency is not None:
        from dartflow.tasks.envs.latency import parse_latency

        parse_latency(name, latency)
    builder.check(params)


def make_environment(name: str, params: Mapping[str, Any] | None = None) -> Environment:
    """A fresh environment instance (inside a worker process), slowed down if params ask for it."""
    builder, params = _resolve(name), dict(params or {})
    latency = params.pop(LATENCY_KEY, None)
    environment = builder.make_environment(params)
    if latency is None:
        return environment
    from dartflow.tasks.envs.latency import LatencyEnvironment, parse_latency

    return LatencyEnvironment(environment, parse_latency(name, latency))


def make_problem_source(name: str, params: Mapping[str, Any] | None = None) -> ProblemSource:
    """The problems of a configured environment (latency does not change them)."""
    builder, params = _resolve(name), dict(params or {})
    params.pop(LATENCY_KEY, None)
    return builder.make_problem_source(params)


def environment_import_path(name: str) -> str:
    """A name for the same environment that resolves in a fresh process (e.g. a spawned worker).

    Names registered with the decorator become `module:QualName`; every other name is returned as is.
    """
    target = _CLASSES.get(name)
    if isinstance(target, type):
        return f"{target.__module__}:{target.__qualname__}"
    _resolve(name)  # unknown names fail here, not in the worker
    return name


# ---- resolution ----------------------------------------------------------------------------------


class _ClassBuilder:
    def __init__(self, cls: type, name: str):
        self.cls, self.name = cls, name

    def check(self, params: dict[str, Any]) -> None:
        check_params = getattr(self.cls, "check_params", None)
        try:
            if check_params is not None:
                check_params(params)
                return
            inspect.signature(self.cls).bind(**params)
            inspect.signature(self.cls.problem_source).bind(**params)
        except EnvironmentConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise EnvironmentConfigError(f"{self.name}: bad params: {error}") from None

    def make_environment(self, params: dict[str, Any]) -> Environment:
        return self.cls(**params)

    def make_problem_source(self, params: dict[str, Any]) -> ProblemSource:
        return _NamedProblemSource(self.cls.problem_source(**params), self.name)


class _FamilyBuilder:
    def __init__(self, family: EnvironmentFamily, task: str):
        self.family, self.task = family, task

    def check(self, params: dict[str, Any]) -> None:
        self.family.check(self.task, params)

    def make_environment(self, params: dict[str, Any]) -> Environment:
        return self.family.make_environment(self.task, params)

    def make_problem_source(self, params: dict[str, Any]) -> ProblemSource:
        return self.family.make_problem_source(self.task, params)


class _NamedProblemSource:
    """Makes problems carry the configured name (e.g. an import path), which any process can rebuild."""

    def __init__(self, inner: ProblemSource, name: str):
        self.inner, self.name = inner, name

    def _named(self, problem: Problem) -> Problem:
        return problem if problem.environment == self.name else replace(problem, environment=self.name)

    def size(self, split: str) -> int:
        return self.inner.size(split)

    def problem(self, split: str, index: int) -> Problem:
        return self._named(self.inner.problem(split, index))

    def sample(self, rng: Any, split: str = "train") -> Problem:
        return self._named(self.inner.sample(rng, split))

    def heldout(self, count: int) -> list[Problem]:
        return [self._named(problem) for problem in self.inner.heldout(count)]


def _resolve(name: str) -> _ClassBuilder | _FamilyBuilder:
    if not isinstance(name, str) or not name:
        raise EnvironmentConfigError(f"environment name must be a non-empty string, got {name!r}")
    if name in _CLASSES:
        target = _CLASSES[name]
        cls = _import_target(target, name) if isinstance(target, str) else target
        _CLASSES[name] = cls
        return _ClassBuilder(cls, name)
    prefix, colon, task = name.partition(":")
    if colon and prefix in _FAMILIES:
        family = _FAMILIES[prefix]
        if isinstance(family, str):
            family = _FAMILIES[prefix] = _import_target(family, name)
        if not task:
            raise EnvironmentConfigError(f"'{name}': name a task after '{prefix}:'")
        return _FamilyBuilder(family, task)
    if colon and prefix in _CLASSES:
        raise EnvironmentConfigError(f"'{name}': the environment '{prefix}' takes no task after ':'")
    if colon and task:
        cls = _import_target(name, name)
        if not isinstance(cls, type):
            raise EnvironmentConfigError(f"'{name}' is not a class (got {type(cls).__name__})")
        missing = _missing_members(cls)
        if missing:
            raise EnvironmentConfigError(
                f"'{name}' is not an environment class: it lacks {', '.join(missing)} (see dartflow.tasks.envs.registry)"
            )
        return _ClassBuilder(cls, name)
    raise EnvironmentConfigError(
        f"unknown environment '{name}'. Registered: {', '.join(registered_environments())}; "
        f"or an import path 'package.module:ClassName' of your own environment class"
    )


def _import_target(target: str, name: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EnvironmentConfigError(f"environment '{name}': cannot import module '{module_name}': {error}") from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise EnvironmentConfigError(f"environment '{name}': module '{module_name}' has no attribute '{attribute}'")
        value = getattr(value, part)
    return value


def _missing_members(cls: type) -> list[str]:
    return [member for member in _REQUIRED_MEMBERS if not hasattr(cls, member)]


def _same_class(existing: type | str, cls: type) -> bool:
    # A module imported twice (e.g. as a script and as a module) registers an equal class again.
    if isinstance(existing, str):
        return existing == f"{cls.__module__}:{cls.__qualname__}"
    return existing is cls or (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
