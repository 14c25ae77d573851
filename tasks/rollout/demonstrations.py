"""Scripted demonstrations in the store schema, for the behaviour-cloning warm-up.

A fresh tiny policy writes gibberish; before RL can find any reward it must learn the action
format. A scripted policy plays real episodes of an environment in-process, and each turn is
tokenized exactly as the rollout service would prompt and tokenize it (same ChatPrompter), so
behaviour cloning teaches the very token layout RL samples in. Scripts act on the observation
only (never on a problem's hidden parameters): the guess_number script guesses uniformly inside
the range the observation states — format, not strategy.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from dartflow.storage.records import TrajectoryRecord, TurnRecord
from dartflow.tasks.envs.protocol import Environment, Problem
from dartflow.tasks.envs.registry import LATENCY_KEY, make_environment, make_problem_source
from dartflow.tasks.rollout.prompts import ChatPrompter, action_format_of

# A demonstration has no sampling distribution: its behaviour log-probs are recorded as 0 (p = 1)
# and its rows carry source="demonstration" so that RL batches never mistake them for rollouts.
DEMONSTRATION_LOGPROB = 0.0
_RANGE = re.compile(r"between (-?\d+) and (-?\d+)")

# (the episode's observations so far, first to latest; rng) -> the next action
Script = Callable[[Sequence[str], random.Random], str]


def random_guess_script(observations: Sequence[str], rng: random.Random) -> str:
    """guess_number: a uniformly random integer inside the range the first observation states."""
    match = _RANGE.search(observations[0])
    low, high = (int(match.group(1)), int(match.group(2))) if match else (1, 100)
    return str(rng.randint(low, high))


def arithmetic_script(observations: Sequence[str], rng: random.Random) -> str:
    """arithmetic: evaluates the integer expression shown (digits, + - * and parentheses only)."""
    expression = re.findall(r"[\d\s+\-*()]+", observations[0])
    candidates = [e for e in expression if any(c.isdigit() for c in e) and any(c in "+-*" for c in e)]
    if not candidates:
        return str(rng.randint(0, 9))
    return str(eval(max(candidates, key=len), {"__builtins__": {}}))  # only digits/operators reach eval


SCRIPTS: dict[str, Script] = {"guess_number": random_guess_script, "arithmetic": arithmetic_script}


def script_for(environment: str) -> Script | None:
    """The scripted policy of an environment name, or None; miniwob:<task> has one for some tasks."""
    if environment in SCRIPTS:
        return SCRIPTS[environment]
    prefix, colon, task = environment.partition(":")
    if colon and prefix == "miniwob":
        from dartflow.tasks.envs.miniwob_demos import demonstration_script

        return demonstration_script(task)
    return None


def scripted_episode(
    problem: Problem,
    params: dict[str, Any],
    prompter: ChatPrompter,
    script: Script,
    rng: random.Random,
    *,
    max_turns: int,
    run_id: str | None = None,
    environment: Environment | None = None,
) -> TrajectoryRecord:
    """Play one episode with `script` in-process and record it as the rollout service would.

    `environment`: an instance of the problem's environment to reuse (its owner closes it); None
    makes and closes one here."""
    owned = environment is None
    if environment is None:
        environment = offline_environment(problem.environment, params)
    try:
        observation = environment.reset(problem)
        observations = [observation]
        conversation = prompter.start(observation, action_format_of(problem.environment, params))
        turns, success, finish = [], False, "truncated"
        limit = min(max_turns, problem.max_turns or max_turns)
        for turn in range(limit):
            action = script(observations, rng)
            response_ids = prompter.encode(action) + list(prompter.stop_token_ids[:1])
            result = environment.step(action)
            turns.append(
                TurnRecord(
                    observation=observation,
                    action=action,
                    prompt_token_ids=list(conversation.prompt_ids),
                    response_token_ids=response_ids,
                    behavior_logprobs=[DEMONSTRATION_LOGPROB] * len(response_ids),
                    min_policy_version=0,
                    reward=float(result.reward),
                )
            )
            if result.done:
                success, finish = bool(result.info.get("success", False)), "done"
                break
            if turn + 1 < limit:
                conversation = prompter.extend(conversation, response_ids, action, result.observation)
                observation = result.observation
                observations.append(observation)
    finally:
        if owned:
            environment.close()
    return TrajectoryRecord(
        problem_id=problem.problem_id,
        group_id=uuid.uuid4().hex,
        environment=problem.environment,
        turns=turns,
        finish_reason=finish,
        success=success,
        run_id=run_id,
        split=problem.split,
        source="demonstration",
        metadata={"script": script.__name__},
    )


def offline_environment(name: str, params: dict[str, Any]) -> Environment:
    # Scripted play is offline: the simulated latency of the run's environments would only slow it.
    return make_environment(name, {k: v for k, v in params.items() if k != LATENCY_KEY})


def scripted_demonstrations(
    environments: list[tuple[str, dict[str, Any]]],
    prompter: ChatPrompter,
    count: int,
    *,
    seed: int = 0,
    max_turns: int = 8,
    run_id: str | None = None,
) -> list[TrajectoryRecord]:
    """`count` demonstrations over the train split of those `environments` that have a script."""
    scripted = [(name, params) for name, params in environments if script_for(name) is not None]
    if not scripted:
        raise ValueError(
            f"no scripted demonstrations for any of {[n for n, _ in environments]}; scripts exist for "
            f"{sorted(SCRIPTS)} and some miniwob:<task> (dartflow.tasks.envs.miniwob_demos.TASK_SCRIPTS)"
        )
    rng = random.Random(seed)
    sources = {name: make_problem_source(name, params) for name, params in scripted}
    # One instance per environment for all its episodes: a miniwob instance starts a browser (~1 s).
    instances: dict[str, Environment] = {}
    records = []
    try:
        for index in range(count):
            name, params = scripted[index % len(scripted)]
            problem = sources[name].sample(rng, "train")
            if name not in instances:
                instances[name] = offline_environment(name, params)
            records.append(scripted_episode(
                problem, params, prompter, script_for(name), rng, max_turns=max_turns, run_id=run_id,
                environment=instances[name],
            ))
    finally:
        for instance in instances.values():
            instance.close()
    return records
