"""Small hand-made trajectory batches for the trainer's tests (storage schema, no store)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from dartflow.storage.records import TrajectoryRecord, TurnRecord, records_to_table


def turn(prompt: Sequence[int], response: Sequence[int], logprobs: Sequence[float] | None = None, version: int = 0) -> TurnRecord:
    logprobs = [-1.0] * len(response) if logprobs is None else logprobs
    return TurnRecord(
        observation="obs", action="act", prompt_token_ids=list(prompt), response_token_ids=list(response),
        behavior_logprobs=list(logprobs), min_policy_version=version,
    )


def trajectory(
    turns: list[TurnRecord], *, reward: float = 0.0, group: str = "g0", source: str = "rollout", trajectory_id: str | None = None
) -> TrajectoryRecord:
    extra = {} if trajectory_id is None else {"trajectory_id": trajectory_id}
    return TrajectoryRecord(
        problem_id=f"p-{group}", group_id=group, environment="toy", turns=turns, finish_reason="done",
        reward=reward, source=source, **extra,
    )


def table(records: list[TrajectoryRecord]) -> pa.Table:
    return records_to_table(records, run_id="test")


def multi_turn_records(
    *,
    groups: int,
    group_size: int,
    vocab_size: int,
    seed: int = 0,
    turns: tuple[int, int] = (1, 3),
    prompt_tokens: tuple[int, int] = (8, 24),
    response_tokens: tuple[int, int] = (4, 16),
    observation_tokens: tuple[int, int] = (3, 8),
    version: int = 0,
    behavior_logprob: float | None = None,
) -> list[TrajectoryRecord]:
    """Random multi-turn trajectories whose turn prompts extend the previous turn's context."""
    rng = np.random.default_rng(seed)
    ints = lambda bounds: int(rng.integers(bounds[0], bounds[1] + 1))  # noqa: E731
    records = []
    for g in range(groups):
        for i in range(group_size):
            context = list(rng.integers(3, vocab_size, ints(prompt_tokens)))
            trajectory_turns = []
            for _ in range(ints(turns)):
                response = list(rng.integers(3, vocab_size, ints(response_tokens)))
                logprobs = (
                    list(-rng.exponential(2.0, len(response))) if behavior_logprob is None else [behavior_logprob] * len(response)
                )
                trajectory_turns.append(turn(context, response, logprobs, version))
                context = context + response + list(rng.integers(3, vocab_size, ints(observation_tokens)))
            records.append(trajectory(trajectory_turns, reward=float(rng.random() < 0.5), group=f"g{g}"))
    return records
