"""Demonstrations in the store schema, for the behaviour-cloning warm-up.

A fresh tiny policy writes gibberish, and a real instruct model answers in prose the verifier does
not score; before RL can find any reward the policy must learn the action format. A demonstration
policy plays real episodes of an environment in-process, and each turn is tokenized exactly as the
rollout service would prompt and tokenize it (same ChatPrompter), so behaviour cloning teaches the
very token layout RL samples in. Two kinds of policy:
- a script, when the environment has one (`SCRIPTS`, miniwob's): it acts on the observations only
  (never on a problem's hidden parameters): the guess_number script guesses uniformly inside the
  range the observation states — format, not strategy. Its episodes train whatever they score.
- else the environment's reference action (`reference_action()`, see tasks/envs/protocol.py), e.g.
  a reasoning_gym dataset's reference answer as `<answer>...</answer>`. Such an episode trains only
  if the environment's own verifier scores it a success; the others are dropped and counted.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dartflow.storage.records import TrajectoryRecord, TurnRecord
from dartflow.tasks.envs.protocol import Environment, Problem, knows_reference_actions, reference_action_of
from dartflow.tasks.envs.registry import LATENCY_KEY, make_environment, make_problem_source
from dartflow.tasks.rollout.prompts import ChatPrompter, action_format_of

# A demonstration has no sampling distribution: its behaviour log-probs are recorded as 0 (p = 1)
# and its rows carry source="demonstration" so that RL batches never mistake them for rollouts.
DEMONSTRATION_LOGPROB = 0.0
_RANGE = re.compile(r"between (-?\d+) and (-?\d+)")

# Reference demonstrations that fail are redrawn: at most this many episodes per one wanted.
MAX_ATTEMPTS_PER_DEMONSTRATION = 4
REFERENCE = "reference_action"  # the policy name of reference demonstrations (metadata["script"])

# (the episode's observations so far, first to latest; rng) -> the next action (None: none known)
Script = Callable[[Sequence[str], random.Random], str | None]


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


def reference_policy(environment: Environment) -> Script:
    """The environment's own reference action for its current state, as a demonstration policy."""

    def reference_action(observations: Sequence[str], rng: random.Random) -> str | None:
        return reference_action_of(environment)

    return reference_action


def demonstration_episode(
    problem: Problem,
    params: dict[str, Any],
    prompter: ChatPrompter,
    script: Script,
    rng: random.Random,
    *,
    max_turns: int,
    run_id: str | None = None,
    environment: Environment | None = None,
) -> TrajectoryRecord | None:
    """Play one episode with `script` in-process and record it as the rollout service would.

    None when the script has no action for the first state (a problem without a reference answer).
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
            if action is None:
                if not turns:
                    return None
                break  # the policy knows no further action: the episode stays truncated
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


def usable_for_bc(record: TrajectoryRecord | None, policy: str) -> bool:
    """Scripted episodes train as played (they teach the format); a reference episode trains only
    when the environment's verifier scored it a success."""
    return record is not None and (policy != REFERENCE or record.success)


def demonstration_quotas(names: Sequence[str], count: int) -> dict[str, int]:
    """`count` demonstrations shared round-robin over `names` (the first ones get the remainder)."""
    return {name: count // len(names) + (index < count % len(names)) for index, name in enumerate(names)}


@dataclass
class Demonstrations:
    """The warm-up's demonstrations and what it took to get them, per configured environment (keyed
    by its name; a name configured again with other params gets ` #2`, ` #3`, ...)."""

    records: list[TrajectoryRecord]
    policies: dict[str, str]  # environment -> its policy: a script's name or REFERENCE
    played: dict[str, int] = field(default_factory=dict)  # episodes attempted
    kept: dict[str, int] = field(default_factory=dict)  # episodes in `records`
    dropped: dict[str, int] = field(default_factory=dict)  # reference episodes not used: no action or no success

    def summary(self) -> str:
        """One line per environment: policy, demonstrations kept, dropped (for the run's log)."""
        lines = []
        for key, policy in self.policies.items():
            dropped, played = self.dropped.get(key, 0), self.played.get(key, 0)
            note = f", {dropped} of {played} dropped (no reference action or not a success)" if dropped else ""
            lines.append(f"demonstrations: {key}: {self.kept.get(key, 0)} by {policy}{note}")
        return "\n".join(lines)


def environment_keys(names: Sequence[str]) -> list[str]:
    """A distinct key per configured environment: its name, with ` #k` from its k-th repeat on."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return keys


def demonstration_policy(name: str, params: dict[str, Any]) -> str | None:
    """An environment's demonstration policy: its script's name, else REFERENCE when its instances
    have `reference_action`, else None."""
    script = script_for(name)
    if script is not None:
        return script.__name__
    instance = offline_environment(name, params)
    try:
        return REFERENCE if knows_reference_actions(instance) else None
    finally:
        instance.close()


def warmup_demonstrations(
    environments: list[tuple[str, dict[str, Any]]],
    prompter: ChatPrompter,
    count: int,
    *,
    seed: int = 0,
    max_turns: int = 8,
    run_id: str | None = None,
) -> Demonstrations:
    """`count` demonstrations over the train split of those `environments` that have a script or a
    reference action, shared round-robin; a dropped reference episode is replaced by another problem
    (at most MAX_ATTEMPTS_PER_DEMONSTRATION tries per one wanted). Raises when none is usable."""
    configured = {}  # key -> (name, params, policy)
    for key, (name, params) in zip(environment_keys([n for n, _ in environments]), environments):
        policy = demonstration_policy(name, params)
        if policy is not None:
            configured[key] = (name, params, policy)
    if not configured:
        raise ValueError(
            f"no demonstrations for any of {[n for n, _ in environments]}: scripts exist for {sorted(SCRIPTS)} "
            f"and some miniwob:<task> (dartflow.tasks.envs.miniwob_demos.TASK_SCRIPTS), and an environment can "
            f"offer reference_action() (tasks/envs/protocol.py; reasoning_gym:<task> does)"
        )
    rng = random.Random(seed)
    keys = list(configured)
    quotas = demonstration_quotas(keys, count)
    sources = {key: make_problem_source(name, params) for key, (name, params, _) in configured.items()}
    policies = {key: policy for key, (_, _, policy) in configured.items()}
    result = Demonstrations([], policies, dict.fromkeys(keys, 0), dict.fromkeys(keys, 0), dict.fromkeys(keys, 0))
    # One instance per environment for all its episodes: a miniwob instance starts a browser (~1 s).
    instances: dict[str, Environment] = {}
    try:
        while True:
            # Round-robin passes, as many as it takes: with no drops, environment i plays episodes i, i+n, ...
            due = [
                key for key in keys
                if result.kept[key] < quotas[key] and result.played[key] < quotas[key] * MAX_ATTEMPTS_PER_DEMONSTRATION
            ]
            if not due:
                break
            for key in due:
                name, params, policy = configured[key]
                if key not in instances:
                    instances[key] = offline_environment(name, params)
                script = reference_policy(instances[key]) if policy == REFERENCE else script_for(name)
                record = demonstration_episode(
                    sources[key].sample(rng, "train"), params, prompter, script, rng,
                    max_turns=max_turns, run_id=run_id, environment=instances[key],
                )
                result.played[key] += 1
                if usable_for_bc(record, policy):
                    result.records.append(record)
                    result.kept[key] += 1
                else:
                    result.dropped[key] += 1
    finally:
        for instance in instances.values():
            instance.close()
    if count and not result.records:
        raise ValueError(
            f"none of {sum(result.played.values())} demonstrations is usable for BC: every reference action of "
            f"{[key for key in keys if result.policies[key] == REFERENCE]} was missing or not scored a success by "
            f"the environment's own verifier\n{result.summary()}"
        )
    return result
