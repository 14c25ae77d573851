"""In-process stand-ins for the engine, the cluster and the store: episode and service logic in ms.

`FakeEngine` answers each prompt with a scripted text (tokenized with the real tiny tokenizer and
ended by its end-of-turn token), tagged with the engine's current policy version; it can raise
PromptTooLong past a context limit, interrupt requests while `interrupting` is set, and cut
responses at max_new_tokens. `FakeCluster` hosts real registered environments in this process and
can fail a reset or a step with EpisodeError. `FakeSink` collects appended groups.
"""

from __future__ import annotations

import asyncio
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from dartflow.tasks.envs.cluster_process import EpisodeError
from dartflow.tasks.envs.protocol import Problem, StepResult
from dartflow.tasks.envs.registry import make_environment
from dartflow.tasks.rollout.generation import Generation, GenerationInterrupted, PromptTooLong, build_generation


class FakeEngine:
    def __init__(
        self,
        tokenizer,
        reply: Callable[[list[int], int], str] = lambda prompt, call: "7",
        *,
        delay_s: float = 0.0,
        max_context_tokens: int = 100_000,
        cut: bool = False,
    ):
        self.tokenizer, self.reply, self.delay_s = tokenizer, reply, delay_s
        self.max_context_tokens, self.cut = max_context_tokens, cut
        self.policy_version = 0
        self.last_swap_s: float | None = None
        self.model_dir = None
        self.calls: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self.interrupting = False  # while set, every request is aborted (a swap in "requeue" mode)

    async def generate(self, prompt_token_ids, *, max_new_tokens, sampling, stop_token_ids=None) -> Generation:
        prompt = list(prompt_token_ids)
        if len(prompt) > self.max_context_tokens:
            raise PromptTooLong(len(prompt), self.max_context_tokens, "max_context_tokens")
        self.calls.append({"prompt": prompt, "sampling": sampling, "stop": list(stop_token_ids or [])})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            version = self.policy_version  # the tokens are "sampled" now, after the delay
            tokens = self.tokenizer.encode(self.reply(prompt, len(self.calls) - 1), add_special_tokens=False)
            if self.cut:
                tokens = (tokens * max_new_tokens)[:max_new_tokens]
                finish = "length"
            else:
                tokens = tokens[: max_new_tokens - 1] + [self.tokenizer.eos_token_id]
                finish = "stop"
            if self.interrupting:
                tokens, finish = tokens[:1], "abort"
            generation = build_generation(
                token_ids=tokens,
                behavior_logprobs=[-0.5 - math.log1p(i) for i in range(len(tokens))],
                version_spans=[(str(version), 0, len(tokens))],
                finish_reason=finish,
                num_prompt_tokens=len(prompt),
                submitted_version=version,
                submitted_at=0.0,
                first_token_at=0.001,
                finished_at=0.002,
            )
        finally:
            self.in_flight -= 1
        if finish == "abort":
            raise GenerationInterrupted(generation)
        return generation


@dataclass
class _Episode:
    observation: str
    environment: Any
    fail_step: int | None
    steps: int = 0

    async def step(self, action_text: str) -> StepResult:
        self.steps += 1
        if self.fail_step == self.steps:
            raise EpisodeError("timeout", f"step {self.steps} took longer than 1.0 s")
        await asyncio.sleep(0)
        return self.environment.step(action_text)


@dataclass
class FakeCluster:
    """`fail_reset` / `fail_step`: problem ids whose reset fails, or whose n-th step fails."""

    fail_reset: set[str] = field(default_factory=set)
    fail_step: dict[str, int] = field(default_factory=dict)
    episodes: list[tuple[str, dict | None]] = field(default_factory=list)
    active: int = 0

    @asynccontextmanager
    async def episode(self, problem: Problem, params: dict | None = None):
        self.episodes.append((problem.problem_id, params))
        if problem.problem_id in self.fail_reset:
            raise EpisodeError("exception", f"reset of {problem.problem_id} raised ValueError('boom')")
        environment = make_environment(problem.environment, params or {})
        self.active += 1
        try:
            yield _Episode(environment.reset(problem), environment, self.fail_step.get(problem.problem_id))
        finally:
            self.active -= 1
            environment.close()


@dataclass
class FakeSink:
    groups: list[list] = field(default_factory=list)
    fail: bool = False

    def append(self, records) -> list[str]:
        if self.fail:
            raise OSError("disk full")
        records = list(records)
        self.groups.append(records)
        return [record.trajectory_id for record in records]

    @property
    def records(self) -> list:
        return [record for group in self.groups for record in group]
