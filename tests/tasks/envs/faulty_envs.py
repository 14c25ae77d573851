"""Environments for the cluster tests: one whose actions choose how it misbehaves, and a factory.

`ScriptedEnv.step(action)` does what the action says, inside the worker process:
    "ok"            -> observation "ok <n>", reward 1.0, done after `max_turns` steps
    "sleep:<s>"     -> sleeps <s> seconds, then like "ok"
    "hang"          -> sleeps for an hour (past any test timeout)
    "raise"         -> raises ValueError
    "exit"          -> os._exit(3)
    "abort"         -> os.abort() (SIGABRT, as a segfaulting extension would die)
    "sigkill"       -> SIGKILL to its own process
    "systemexit"    -> raises SystemExit(7), which unwinds the worker's loop
    "pid"           -> observation is the worker's pid
Referred to by import path (`faulty_envs:ScriptedEnv`), which the registry resolves: this folder is
on sys.path under pytest, and spawned workers inherit the parent's sys.path. `make_environment` is
a stand-in factory for tests that inject one (and for worker-slot tests that spawn nothing).
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from typing import Any, ClassVar

from dartflow.tasks.envs.protocol import Problem, StepResult

# Set in a parent, this makes the workers it spawns next fail while unpickling their factory (which
# imports this module): a worker that cannot start, for the restart back-off test.
BROKEN_IN_WORKERS = "DARTFLOW_TEST_BROKEN_WORKERS"
if os.environ.get(BROKEN_IN_WORKERS):
    raise ImportError(f"faulty_envs refuses to load: {BROKEN_IN_WORKERS} is set")

SCRIPTED = "faulty_envs:ScriptedEnv"
instances_built = 0  # per process: how many ScriptedEnv objects this process constructed


class ScriptedEnv:
    name: ClassVar[str] = SCRIPTED
    action_format: ClassVar[str] = "ok | sleep:<seconds> | hang | raise | exit | abort | sigkill | systemexit | pid"

    def __init__(self, max_turns: int = 3, **_: Any) -> None:
        global instances_built
        instances_built += 1
        self.max_turns = max_turns
        self.turn = 0

    def reset(self, problem: Problem) -> str:
        self.turn = 0
        if problem.params.get("reset") == "hang":
            time.sleep(3600)
        if problem.params.get("reset") == "raise":
            raise RuntimeError(f"cannot reset {problem.problem_id}")
        return f"start {problem.problem_id} built={instances_built}"

    def step(self, action_text: str) -> StepResult:
        self.turn += 1
        command, _, argument = action_text.partition(":")
        if command == "sleep":
            time.sleep(float(argument))
        elif command == "hang":
            time.sleep(3600)
        elif command == "raise":
            raise ValueError("scripted failure")
        elif command == "exit":
            os._exit(3)
        elif command == "abort":
            os.abort()
        elif command == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif command == "systemexit":
            raise SystemExit(7)
        elif command == "pid":
            return StepResult(str(os.getpid()), 0.0, False, {})
        done = self.turn >= self.max_turns
        return StepResult(f"ok {self.turn}", 1.0, done, {"success": done} if done else {})

    def close(self) -> None:
        pass

    @classmethod
    def problem_source(cls, **_: Any) -> "ScriptedProblems":
        return ScriptedProblems()


class ScriptedProblems:
    """Problems that only carry an index: the actions decide what happens."""

    SIZE = 1000

    def size(self, split: str) -> int:
        return self.SIZE

    def problem(self, split: str, index: int) -> Problem:
        if not 0 <= index < self.SIZE:
            raise IndexError(index)
        return Problem(f"scripted/{split}/{index}", SCRIPTED, split, 0.0, {})

    def sample(self, rng: Any, split: str = "train") -> Problem:
        return self.problem(split, rng.randrange(self.SIZE))

    def heldout(self, count: int) -> list[Problem]:
        return [self.problem("heldout", index) for index in range(min(count, self.SIZE))]


def make_environment(name: str, params: dict[str, Any]) -> Any:
    """A factory that builds import-path environments ("pkg.module:Class") without the registry."""
    module_name, _, class_name = name.partition(":")
    return getattr(importlib.import_module(module_name), class_name)(**params)


def problem(index: int = 0, environment: str = SCRIPTED, **params: Any) -> Problem:
    return Problem(f"scripted/train/{index}", environment, "train", 0.0, params)
