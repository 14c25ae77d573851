"""The registry: names, import paths, the decorator, families, error messages and lazy imports."""

import json
import random
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from dartflow.tasks.envs.problems import IndexedProblemSource
from dartflow.tasks.envs.protocol import Environment, Problem, ProblemSource, StepResult
from dartflow.tasks.envs.registry import (
    EnvironmentConfigError,
    check_environment,
    environment_import_path,
    make_environment,
    make_problem_source,
    register_environment,
    register_family,
    registered_environments,
)


class CountToEnv:
    """A user's environment, defined outside dartflow: say the numbers 1..target, one per turn."""

    name: ClassVar[str] = "count_to"
    action_format: ClassVar[str] = "the next number"

    def __init__(self, bonus: float = 0.0):
        self.bonus = bonus
        self.next, self.target = 1, 0

    @classmethod
    def problem_source(cls, bonus: float = 0.0) -> ProblemSource:
        def build(split: str, index: int) -> Problem:
            target = index + 1
            return Problem(f"count_to/{split}/{index}", "count_to", split, float(target), {"target": target}, target)

        return IndexedProblemSource({"train": 5, "heldout": 2}, build)

    def reset(self, problem: Problem) -> str:
        self.next, self.target = 1, problem.params["target"]
        return f"Count to {self.target}."

    def step(self, action_text: str) -> StepResult:
        if action_text.strip() != str(self.next):
            return StepResult(f"Say {self.next}.", 0.0, False, {"invalid_action": True})
        self.next += 1
        done = self.next > self.target
        return StepResult("ok", 1.0 + self.bonus if done else 0.0, done, {"success": done} if done else {})

    def close(self) -> None:
        pass


class OnlyInitTakesX(CountToEnv):
    def __init__(self, x: int = 1):
        super().__init__()


class NotAnEnvironment:
    def reset(self, problem):
        return ""


USER_ENV = f"{__name__}:CountToEnv"


def test_builtins_are_registered_and_fresh_instances_satisfy_the_protocol():
    # other tests in the session may have registered names of their own
    assert {"arithmetic", "guess_number", "reasoning_gym:<task>", "textarena:<task>"} <= set(registered_environments())
    for name in ("guess_number", "arithmetic"):
        check_environment(name)
        a, b = make_environment(name), make_environment(name)
        assert a is not b and isinstance(a, Environment) and a.name == name and a.action_format
        assert isinstance(make_problem_source(name), ProblemSource)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(EnvironmentConfigError) as error:
        check_environment("guess_numbers")
    message = str(error.value)
    assert message.startswith("unknown environment 'guess_numbers'. Registered: arithmetic, ")
    for name in ("guess_number", "reasoning_gym:<task>", "textarena:<task>"):
        assert name in message
    assert "'package.module:ClassName'" in message


def test_user_environment_by_import_path_plays_and_names_its_problems_by_that_path():
    check_environment(USER_ENV, {"bonus": 0.5})
    source = make_problem_source(USER_ENV, {"bonus": 0.5})
    problem = source.problem("train", 2)
    assert problem.environment == USER_ENV  # rebuildable in any process, unlike the class's own name
    assert source.sample(random.Random(0)).environment == USER_ENV
    assert [p.environment for p in source.heldout(5)] == [USER_ENV] * 2
    env = make_environment(USER_ENV, {"bonus": 0.5})
    assert env.reset(problem) == "Count to 3."
    assert env.step("two").info["invalid_action"]
    assert [env.step(str(n)).reward for n in (1, 2, 3)] == [0.0, 0.0, 1.5]
    assert environment_import_path(USER_ENV) == USER_ENV


def test_user_environment_with_latency_is_wrapped():
    env = make_environment(USER_ENV, {"latency": {"kind": "fixed", "seconds": 0.001}})
    assert env.name == "count_to" and env.reset(make_problem_source(USER_ENV).problem("train", 0)) == "Count to 1."


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (USER_ENV, {"bonsu": 1}, f"{USER_ENV}: bad params: got an unexpected keyword argument 'bonsu'"),
        (f"{__name__}:NotAnEnvironment", {}, "is not an environment class: it lacks name, action_format, step, close, problem_source"),
        (f"{__name__}:USER_ENV", {}, "is not a class"),
        (f"{__name__}:Missing", {}, f"module '{__name__}' has no attribute 'Missing'"),
        ("no_such_package.module:Env", {}, "cannot import module 'no_such_package.module'"),
        (f"{__name__}:OnlyInitTakesX", {"x": 2}, "got an unexpected keyword argument 'x'"),
        ("guess_number:hard", {}, "'guess_number' takes no task"),
        ("", {}, "non-empty string"),
    ],
)
def test_import_path_errors_say_what_is_wrong(name, params, message):
    with pytest.raises(EnvironmentConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_environment(name, params)


def test_decorator_registers_a_name_and_gives_an_import_path_for_workers():
    @register_environment("registry_test_count")
    class Registered(CountToEnv):
        pass

    check_environment("registry_test_count")
    assert isinstance(make_environment("registry_test_count"), Registered)
    assert make_problem_source("registry_test_count").problem("train", 0).environment == "registry_test_count"
    assert "registry_test_count" in registered_environments()
    path = environment_import_path("registry_test_count")
    assert path == f"{__name__}:test_decorator_registers_a_name_and_gives_an_import_path_for_workers.<locals>.Registered"
    register_environment("registry_test_count")(Registered)  # the same class again: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_environment("registry_test_count")(CountToEnv)


def test_decorator_refuses_builtin_names_and_incomplete_classes():
    with pytest.raises(ValueError, match="'guess_number' is a built-in environment name"):
        register_environment("guess_number")(CountToEnv)
    with pytest.raises(TypeError, match="lacks name, action_format, step, close, problem_source"):
        register_environment("registry_test_broken")(NotAnEnvironment)
    with pytest.raises(ValueError, match="built-in environment family"):
        register_family("textarena", object())


class CountFamily:
    """`count:<n>`: a family whose task is the number to count to."""

    def check(self, task: str, params: dict[str, Any]) -> None:
        if not task.isdigit():
            raise EnvironmentConfigError(f"count:{task}: the task must be a number")

    def make_environment(self, task: str, params: dict[str, Any]) -> Environment:
        return CountToEnv(**params)

    def make_problem_source(self, task: str, params: dict[str, Any]) -> ProblemSource:
        return CountToEnv.problem_source(**params)


def test_registered_family_resolves_its_tasks():
    register_family("registry_test_count_family", CountFamily())
    check_environment("registry_test_count_family:3")
    with pytest.raises(EnvironmentConfigError, match="the task must be a number"):
        check_environment("registry_test_count_family:three")
    assert isinstance(make_environment("registry_test_count_family:3"), CountToEnv)


LAZY_PROBE = """
import json, sys, time
start = time.perf_counter()
from dartflow.tasks.envs.registry import check_environment, make_environment, make_problem_source
registry_s = time.perf_counter() - start
for name in ("guess_number", "arithmetic"):
    check_environment(name, {"latency": {"kind": "fixed", "seconds": 0}})
    env = make_environment(name, {"latency": {"kind": "fixed", "seconds": 0}})
    env.reset(make_problem_source(name).problem("train", 0))
    env.step("1")
check_environment("textarena:GuessTheNumber")  # config-time checks of textarena games use a table
heavy = [m for m in ("reasoning_gym", "textarena", "nltk", "torch", "vllm") if m in sys.modules]
print(json.dumps({"heavy": heavy, "registry_s": registry_s}))
"""


def test_registry_builtins_and_textarena_checks_never_import_reasoning_gym_or_textarena():
    output = subprocess.run([sys.executable, "-c", LAZY_PROBE], capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["registry_s"] < 2.0  # pydantic dominates (~0.2 s here); the families would add ~1.5 s each
