"""The multi-turn episode loop: reset, then generate -> step until done, a limit, or an error.

    record = await run_episode(problem, engine=engine, cluster=cluster, prompter=prompter,
                               settings=EpisodeSettings.from_config(config.rollout), group_id=gid)

One episode gives one TrajectoryRecord (storage/records.py), whatever happens. Per turn it holds
the observation shown, the action text, the prompt and response token ids, the behaviour log-prob
of every response token, the policy-version range of the turn, the reward and the timings.
How it ends (`finish_reason`):
- `done`: the environment said so (`success` from its info);
- `truncated`: a limit ended it first, named in metadata `truncated_by`: `max_turns` (the least of
  the config's, the problem's and the group's turn limits), `max_new_tokens` (a response cut at
  the per-turn token limit, when `on_length_cut="truncate"`: the cut response is recorded but not
  sent to the environment), `max_context_tokens` (the next prompt does not fit), or `max_model_len`;
- `error`: the environment failed (EpisodeError: exception, timeout, crash); metadata `error_kind`
  and `error_reason` say how; turns before it are kept, the failed turn too (reward 0);
- `interrupted`: a weight swap aborted a generation (in_flight_on_swap = "requeue"). The episode
  stops there; the rollout service drops it and runs the problem again from the start, so that
  every turn of the rerun is sampled by the new policy (re-sampling only the aborted turn would
  keep the old policy's earlier turns: no fresher than `finish`).
The loop itself is a thin async shell over the pure pieces below (turn limit, record building).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from dartflow.storage.records import TrajectoryRecord, TurnRecord
from dartflow.tasks.envs.cluster_process import EpisodeError
from dartflow.tasks.envs.problems import stable_seed
from dartflow.tasks.envs.protocol import Problem
from dartflow.tasks.rollout.generation import Generation, GenerationInterrupted, PromptTooLong, SamplingSettings
from dartflow.tasks.rollout.prompts import ChatPrompter, Conversation, action_format_of

if TYPE_CHECKING:
    from dartflow.config import RolloutConfig

OnLengthCut = Literal["truncate", "act"]
SEED_RANGE = 2**31  # vLLM takes per-request seeds as int


@dataclass(frozen=True)
class EpisodeSettings:
    """How every episode is played (from the run config's rollout section)."""

    max_turns: int = 8
    max_new_tokens: int = 64
    sampling: SamplingSettings = SamplingSettings()
    # A response cut at max_new_tokens: end the episode as truncated (the rule), or send it
    # to the environment anyway as the action ("act": the environment judges what was written).
    on_length_cut: OnLengthCut = "truncate"

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_new_tokens < 1:
            raise ValueError(f"max_turns ({self.max_turns}) and max_new_tokens ({self.max_new_tokens}) must be >= 1")
        if self.on_length_cut not in ("truncate", "act"):
            raise ValueError(f"on_length_cut must be 'truncate' or 'act', got {self.on_length_cut!r}")

    @classmethod
    def from_config(cls, rollout: RolloutConfig, **overrides: Any) -> EpisodeSettings:
        settings = cls(
            max_turns=rollout.max_turns,
            max_new_tokens=rollout.max_new_tokens,
            sampling=SamplingSettings(temperature=rollout.temperature, top_p=rollout.top_p),
        )
        return replace(settings, **overrides)

    def sampling_for(self, episode_seed: int | None, turn: int) -> SamplingSettings:
        """The turn's sampling settings; with an episode seed, a per-turn request seed from it."""
        if episode_seed is None:
            return self.sampling
        return replace(self.sampling, seed=stable_seed("turn", episode_seed, turn) % SEED_RANGE)


def turn_limit(config_max_turns: int, problem_max_turns: int | None, group_max_turns: int | None = None) -> int:
    """The least of the turn limits that are set."""
    return min(limit for limit in (config_max_turns, problem_max_turns, group_max_turns) if limit is not None)


def length_cut_limit(generation: Generation, max_new_tokens: int) -> str:
    """Which limit cut a response that ended on "length"."""
    return "max_new_tokens" if generation.num_tokens >= max_new_tokens else "max_model_len"


def turn_record(
    *,
    observation: str,
    action: str,
    prompt_ids: Sequence[int],
    generation: Generation,
    reward: float,
    environment_seconds: float,
) -> TurnRecord:
    """One turn as the store keeps it."""
    return TurnRecord(
        observation=observation,
        action=action,
        prompt_token_ids=list(prompt_ids),
        response_token_ids=list(generation.token_ids),
        # A sampled token's log-prob is <= 0; float rounding can put a near-certain one at +1e-7.
        behavior_logprobs=[min(float(logprob), 0.0) for logprob in generation.behavior_logprobs],
        min_policy_version=generation.min_policy_version,
        max_policy_version=generation.max_policy_version,
        reward=float(reward),
        generation_seconds=generation.duration_s,
        environment_seconds=environment_seconds,
    )


@dataclass
class EpisodeLog:
    """What one episode accumulates; `record()` turns it into a TrajectoryRecord."""

    problem: Problem
    group_id: str
    start_version: int  # the engine's version at the start: the range of an episode with no turn
    turns: list[TurnRecord] = field(default_factory=list)
    finish_reason: str | None = None
    success: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    queued_s: float = 0.0

    def add_turn(self, turn: TurnRecord, queued_s: float = 0.0) -> None:
        self.turns.append(turn)
        self.queued_s += queued_s

    def finish(self, reason: str, *, success: bool = False, **metadata: Any) -> None:
        self.finish_reason, self.success = reason, success
        self.metadata.update(metadata)

    def record(self, *, run_id: str | None = None, wall_s: float = 0.0) -> TrajectoryRecord:
        if self.finish_reason is None:
            raise RuntimeError(f"episode of {self.problem.problem_id} has not finished")
        versions = {}
        if not self.turns:  # nothing was sampled: the version it would have been sampled with
            versions = {"min_policy_version": self.start_version, "max_policy_version": self.start_version}
        metadata = {
            "difficulty": self.problem.difficulty,
            "queued_s": round(self.queued_s, 6),
            "episode_s": round(wall_s, 6),
            **self.metadata,
        }
        return TrajectoryRecord(
            problem_id=self.problem.problem_id,
            group_id=self.group_id,
            environment=self.problem.environment,
            turns=self.turns,
            finish_reason=self.finish_reason,
            success=self.success,
            run_id=run_id,
            split=self.problem.split,
            metadata=metadata,
            **versions,
        )


async def run_episode(
    problem: Problem,
    *,
    engine: Any,
    cluster: Any,
    prompter: ChatPrompter,
    settings: EpisodeSettings,
    group_id: str,
    params: dict[str, Any] | None = None,
    max_turns: int | None = None,
    seed: int | None = None,
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrajectoryRecord:
    """Play one episode of `problem`; never raises for what ends an episode (see the module doc).

    `engine`: a RolloutEngine (or anything with its `generate` and `policy_version`); `cluster`: an
    EnvironmentCluster (or anything with its `episode(problem, params)`). `params` are the
    environment's params for the cluster (None: as configured there); `max_turns` a group's turn
    budget; `seed` makes the sampling reproducible (one request seed per turn derived from it).
    """
    started = time.perf_counter()
    limit = turn_limit(settings.max_turns, problem.max_turns, max_turns)
    log = EpisodeLog(problem, group_id, engine.policy_version, metadata={**(metadata or {}), "turn_limit": limit})
    try:
        async with cluster.episode(problem, params) as environment:
            await _play(environment, log, limit, engine, prompter, settings, params, seed)
    except EpisodeError as error:
        log.finish("error", error_kind=error.kind, error_reason=error.reason)
    return log.record(run_id=run_id, wall_s=time.perf_counter() - started)


async def _play(
    environment, log: EpisodeLog, limit: int, engine, prompter: ChatPrompter, settings, params, seed
) -> None:
    observation = environment.observation
    conversation = prompter.start(observation, action_format_of(log.problem.environment, params))
    for turn in range(limit):
        try:
            generation = await engine.generate(
                conversation.prompt_ids,
                max_new_tokens=settings.max_new_tokens,
                sampling=settings.sampling_for(seed, turn),
                stop_token_ids=prompter.stop_token_ids,
            )
        except PromptTooLong as error:
            return log.finish("truncated", **_prompt_meta(conversation, error))
        except GenerationInterrupted as error:
            return log.finish("interrupted", interrupted_turn=turn, interrupted_tokens=error.partial.num_tokens)
        action = prompter.action_text(generation.token_ids)
        turn_args = dict(
            observation=observation, action=action, prompt_ids=conversation.prompt_ids, generation=generation
        )
        if generation.finish_reason == "length" and settings.on_length_cut == "truncate":
            log.add_turn(turn_record(**turn_args, reward=0.0, environment_seconds=0.0), generation.queued_s)
            return log.finish("truncated", truncated_by=length_cut_limit(generation, settings.max_new_tokens),
                              prompt_incremental=conversation.incremental)
        step_started = time.perf_counter()
        try:
            result = await environment.step(action)
        except EpisodeError:
            seconds = time.perf_counter() - step_started
            log.add_turn(turn_record(**turn_args, reward=0.0, environment_seconds=seconds), generation.queued_s)
            log.metadata["prompt_incremental"] = conversation.incremental
            raise
        seconds = time.perf_counter() - step_started
        log.add_turn(turn_record(**turn_args, reward=result.reward, environment_seconds=seconds), generation.queued_s)
        if result.done:
            success = bool(result.info.get("success", False))
            return log.finish("done", success=success, prompt_incremental=conversation.incremental)
        if turn + 1 < limit:
            conversation = prompter.extend(conversation, generation.token_ids, action, result.observation)
            observation = result.observation
    log.finish("truncated", truncated_by="max_turns", prompt_incremental=conversation.incremental)


def _prompt_meta(conversation: Conversation, error: PromptTooLong) -> dict[str, Any]:
    limit = "max_context_tokens" if "max_context_tokens" in str(error) else "max_model_len"
    return {
        "truncated_by": limit,
        "prompt_tokens": error.num_prompt_tokens,
        "prompt_incremental": conversation.incremental,
    }
