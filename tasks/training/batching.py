"""From an Arrow batch of trajectories (storage/schema.py) to padded tensors with loss masks.

Multi-turn credit: each turn's advantage (advantages.turn_advantages: the trajectory's, or the
turn's own under reward-to-go credit) goes to every token the agent generated in that turn; prompt
and observation tokens are in the input but masked out of the loss.

Each turn's `prompt_token_ids` is the whole context the engine was given (history included), and
the behaviour log-probs were computed on exactly that context. When turn k+1's prompt starts with
turn k's prompt + response (the usual case with a chat template), the turns are merged into one
sequence and trained in one forward pass; when it does not (the history was re-tokenized
differently, or truncated), the turn starts a new sequence, so every token is always scored on the
context it was sampled from.

Sequences are right-padded: with causal attention a real token never attends to the pad tokens
after it, so no padding mask is needed and positions are the plain 0..T-1.

Two trainer-side curation rules change which tokens train and how much (issue 7):
`kept_turns` leaves the tokens of the other turns out of the mask (as if they were observations,
so they add nothing to the loss or to its normaliser), and `trajectory_weights` scales each
trajectory's token weights (the normaliser being the total weight, weight 0 = the row is absent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch


@dataclass(frozen=True)
class TokenSequence:
    """One forward pass worth of tokens of one trajectory."""

    row: int  # trajectory row in the batch
    token_ids: np.ndarray  # (T,) int64
    agent_mask: np.ndarray  # (T,) bool: the agent sampled this token (and it has a prefix)
    behavior_logprobs: np.ndarray  # (T,) float32, 0 off the agent tokens
    turn_of_token: np.ndarray  # (T,) int64: the trajectory's turn that sampled the token, -1 off the agent tokens


@dataclass(frozen=True)
class MicroBatch:
    """The sequences of a few trajectories, right-padded. Token-aligned: column t is token t."""

    input_ids: torch.Tensor  # (B, T) int64
    loss_mask: torch.Tensor  # (B, T) bool: token t is an agent token (predicted from column t-1)
    behavior_logprobs: torch.Tensor  # (B, T) float32, 0 off the mask
    advantages: torch.Tensor  # (B, T) float32, the advantage of each agent token's turn, 0 off the mask
    token_weights: torch.Tensor  # (B, T) float32: each agent token's share of the loss (see LOSS_AGGREGATIONS), 0 off the mask
    rows: torch.Tensor  # (B,) int64: trajectory row in the batch of each sequence
    lengths: torch.Tensor  # (B,) int64: tokens of each sequence before padding
    token_turns: torch.Tensor  # (B, T) int64: the row's turn that sampled each token of the mask, -1 off the mask

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_input_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def num_padded_tokens(self) -> int:
        return self.input_ids.numel()


def _nested_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A list<list<x>> column as (turn offsets per row (n+1,), offsets per turn, flat values)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    turns = array.values  # offsets below are absolute into these children, also for a slice
    return array.offsets.to_numpy(), turns.offsets.to_numpy(), turns.values.to_numpy(zero_copy_only=False)


def trajectory_sequences(table: pa.Table) -> list[TokenSequence]:
    """Every trajectory of `table` as one sequence, or several when its turns are not prefixes."""
    row_turns, prompt_offsets, prompt_values = _nested_lists(table["prompt_token_ids"])
    _, response_offsets, response_values = _nested_lists(table["response_token_ids"])
    _, logprob_offsets, logprob_values = _nested_lists(table["behavior_logprobs"])
    sequences: list[TokenSequence] = []
    for row in range(table.num_rows):
        pieces: list[tuple[np.ndarray, int, np.ndarray | None]] = []  # (tokens, turn or -1, behaviour)
        context = np.zeros(0, dtype=np.int64)  # tokens of the sequence being built
        for turn in range(row_turns[row], row_turns[row + 1]):
            prompt = prompt_values[prompt_offsets[turn] : prompt_offsets[turn + 1]].astype(np.int64)
            response = response_values[response_offsets[turn] : response_offsets[turn + 1]].astype(np.int64)
            behavior = logprob_values[logprob_offsets[turn] : logprob_offsets[turn + 1]]
            extends = pieces and prompt.size >= context.size and np.array_equal(prompt[: context.size], context)
            if pieces and not extends:
                sequences.append(_assemble(row, pieces))
                pieces, context = [], np.zeros(0, dtype=np.int64)
            new_context = prompt[context.size :]
            pieces += [(new_context, -1, None), (response, turn - row_turns[row], behavior)]
            context = np.concatenate([context, new_context, response])
        if pieces:
            sequences.append(_assemble(row, pieces))
    return sequences


def _assemble(row: int, pieces: list[tuple[np.ndarray, int, np.ndarray | None]]) -> TokenSequence:
    token_ids = np.concatenate([tokens for tokens, _, _ in pieces])
    turn_of_token = np.concatenate([np.full(tokens.size, turn, dtype=np.int64) for tokens, turn, _ in pieces])
    agent_mask = turn_of_token >= 0
    behavior = np.concatenate(
        [np.zeros(tokens.size, np.float32) if lp is None else lp.astype(np.float32) for tokens, _, lp in pieces]
    )
    agent_mask[:1] = False  # the first token has no prefix to be predicted from
    turn_of_token[~agent_mask] = -1
    return TokenSequence(row, token_ids, agent_mask, behavior, turn_of_token)


def collate(
    sequences: list[TokenSequence], advantages: torch.Tensor, pad_token_id: int, row_weights: torch.Tensor | None = None
) -> MicroBatch:
    """Right-pad `sequences` into one MicroBatch. `advantages`: (n,) one per trajectory row, or
    (n, turns) one per turn of each row; `row_weights` (n,): the weight of each agent token of a
    trajectory (default 1)."""
    width = max(seq.token_ids.size for seq in sequences)
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)  # (B, T)
    loss_mask = np.zeros((len(sequences), width), dtype=bool)  # (B, T)
    behavior = np.zeros((len(sequences), width), dtype=np.float32)  # (B, T)
    token_turns = np.full((len(sequences), width), -1, dtype=np.int64)  # (B, T)
    for i, seq in enumerate(sequences):
        input_ids[i, : seq.token_ids.size] = seq.token_ids
        loss_mask[i, : seq.token_ids.size] = seq.agent_mask
        behavior[i, : seq.token_ids.size] = seq.behavior_logprobs
        token_turns[i, : seq.token_ids.size] = seq.turn_of_token
    rows = torch.tensor([seq.row for seq in sequences], dtype=torch.int64)  # (B,)
    loss_mask_t = torch.from_numpy(loss_mask)
    return MicroBatch(
        input_ids=torch.from_numpy(input_ids),
        loss_mask=loss_mask_t,
        behavior_logprobs=torch.from_numpy(behavior),
        advantages=_token_advantages(advantages, rows, torch.from_numpy(token_turns)) * loss_mask_t,
        token_weights=(
            torch.ones(len(sequences)) if row_weights is None else row_weights.to(torch.float32)[rows]
        )[:, None].expand(-1, width) * loss_mask_t,
        rows=rows,
        lengths=torch.tensor([seq.token_ids.size for seq in sequences], dtype=torch.int64),
        token_turns=torch.from_numpy(token_turns),
    )


def _token_advantages(advantages: torch.Tensor, rows: torch.Tensor, token_turns: torch.Tensor) -> torch.Tensor:
    """(B, T) advantage of each token's row (advantages (n,)) or of its row's turn (advantages (n, turns))."""
    advantages = advantages.to(torch.float32)
    if advantages.dim() == 1:
        return advantages[rows][:, None].expand_as(token_turns)
    per_turn = advantages[rows]  # (B, turns)
    return torch.gather(per_turn, 1, token_turns.clamp(min=0, max=max(per_turn.shape[1] - 1, 0)))


def build_micro_batches(
    table: pa.Table, advantages: torch.Tensor, *, micro_batch_size: int, pad_token_id: int,
    aggregation: str = "token_mean", trajectory_weights: np.ndarray | None = None,
    kept_turns: Sequence[np.ndarray] | None = None,
) -> list[MicroBatch]:
    """Micro-batches of `micro_batch_size` trajectories each (their sequences), longest first.

    Sorting by length keeps padding low; it changes nothing else, since the loss is a weighted sum
    over the whole batch divided by the batch's total weight. `advantages`: (num_rows,), one per
    trajectory, or (num_rows, turns), one per turn (turns >= the most turns of a row);
    `aggregation`: how the batch's tokens share the loss (LOSS_AGGREGATIONS);
    `trajectory_weights` (num_rows,): multiplies every token weight of its row (`check_trajectory_weights`);
    `kept_turns`: per row, a bool per turn; only the tokens of kept turns enter the mask, and the
    aggregation counts only them. The chunks and the tensors' shapes do not depend on either, so
    the i-th micro-batch holds the same sequences with or without them.
    """
    most_turns = max(table["prompt_token_ids"].combine_chunks().value_lengths().to_pylist(), default=0) if table.num_rows else 0
    if advantages.dim() not in (1, 2) or advantages.shape[0] != table.num_rows or (
        advantages.dim() == 2 and advantages.shape[1] < most_turns
    ):
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected ({table.num_rows},) or "
            f"({table.num_rows}, >= {most_turns})"
        )
    by_row: dict[int, list[TokenSequence]] = {}
    for seq in trajectory_sequences(table):
        by_row.setdefault(seq.row, []).append(seq if kept_turns is None else keep_turns(seq, kept_turns[seq.row]))
    agent_tokens = np.zeros(table.num_rows, dtype=np.int64)
    for row, seqs in by_row.items():
        agent_tokens[row] = sum(int(seq.agent_mask.sum()) for seq in seqs)
    row_weights = token_weights_per_row(agent_tokens, aggregation)
    if trajectory_weights is not None:
        row_weights = (row_weights * np.asarray(trajectory_weights, dtype=np.float64)).astype(np.float32)
    row_weights = torch.from_numpy(row_weights)
    lengths = {row: sum(seq.token_ids.size for seq in seqs) for row, seqs in by_row.items()}
    order = sorted(by_row, key=lambda row: -lengths[row])  # stable: ties keep batch order
    chunks = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    return [
        collate([seq for row in chunk for seq in by_row[row]], advantages, pad_token_id, row_weights) for chunk in chunks
    ]


# How the agent tokens of a batch share the loss (the loss = weighted token sum / total weight):
# "token_mean": every token weighs 1, so long trajectories count more; in a group where failures are
#   longer than successes (multi-turn: failing takes every turn) the token-mean advantage is negative
#   and the step pushes down the sampled tokens overall.
# "trajectory_mean": each trajectory weighs 1 in total, spread over its tokens, so a group's
#   advantages sum to zero in the loss as they do per trajectory.
LOSS_AGGREGATIONS = ("token_mean", "trajectory_mean")
# What a behaviour-cloning step predicts: the agent's replies, or the whole transcript (whole_transcript).
BC_LOSSES = ("replies", "transcript")


def whole_transcript(micro_batch: MicroBatch) -> MicroBatch:
    """`micro_batch` with every token of each sequence in the loss, weight 1 each: the prompts and the
    environment's observations as well as the agent's replies (all but the first token, which has no
    prefix). For a behaviour-cloning warm-up that also models the environment (training.bc_loss)."""
    columns = torch.arange(micro_batch.input_ids.shape[1])  # (T,)
    in_sequence = (columns[None, :] >= 1) & (columns[None, :] < micro_batch.lengths[:, None])  # (B, T)
    return replace(micro_batch, loss_mask=in_sequence, token_weights=in_sequence.to(torch.float32))


def token_weights_per_row(agent_tokens: np.ndarray, aggregation: str) -> np.ndarray:
    """The weight of each agent token of each trajectory, from its agent-token count. (n,) float32."""
    if aggregation == "token_mean":
        return np.ones(agent_tokens.shape, dtype=np.float32)
    if aggregation == "trajectory_mean":
        return (1.0 / np.maximum(agent_tokens, 1)).astype(np.float32)
    raise ValueError(f"loss aggregation must be one of {LOSS_AGGREGATIONS}, got {aggregation!r}")


def keep_turns(sequence: TokenSequence, kept: np.ndarray) -> TokenSequence:
    """`sequence` with only the agent tokens of the turns where `kept` (bool, one per turn of its row)."""
    lookup = np.append(np.asarray(kept, dtype=bool), False)  # turn -1 (not an agent token) -> False
    agent_mask = sequence.agent_mask & lookup[sequence.turn_of_token]
    return replace(sequence, agent_mask=agent_mask, turn_of_token=np.where(agent_mask, sequence.turn_of_token, -1))


def check_trajectory_weights(weights: Sequence[float] | np.ndarray, num_rows: int) -> np.ndarray:
    """`weights` as a float64 array (num_rows,), or a ValueError saying what is wrong with them."""
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (num_rows,):
        raise ValueError(f"trajectory_weights must hold one weight per batch row, shape ({num_rows},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        rows = np.flatnonzero(~np.isfinite(array)).tolist()
        raise ValueError(f"trajectory_weights must be finite, got NaN or inf at rows {rows}")
    if np.any(array < 0):
        raise ValueError(f"trajectory_weights must be >= 0, got negative ones at rows {np.flatnonzero(array < 0).tolist()}")
    return array


def staleness(table: pa.Table, trainer_version: int) -> np.ndarray:
    """Versions between the trainer and the oldest token of each trajectory. Shape (n,), int64."""
    return trainer_version - table["min_policy_version"].to_numpy().astype(np.int64)


def rollout_staleness(table: pa.Table, trainer_version: int) -> np.ndarray:
    """`staleness` of the rows that are not pooled successes (`source` "pool"): the experience
    pool's rows are old on purpose, and the staleness bound is about rollouts. A table without a
    `source` column is all rollouts. Shape (rows kept,), int64."""
    values = staleness(table, trainer_version)
    if "source" not in table.column_names:
        return values
    return values[np.asarray(table["source"].to_pylist(), dtype=object) != "pool"]
