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
"""

from __future__ import annotations

from dataclasses import dataclass

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
    aggregation: str = "token_mean",
) -> list[MicroBatch]:
    """Micro-batches of `micro_batch_size` trajectories each (their sequences), longest first.

    Sorting by length keeps padding low; it changes nothing else, since the loss is a weighted sum
    over the whole batch divided by the batch's total weight. `advantages`: (num_rows,), one per
    trajectory, or (num_rows, turns), one per turn (turns >= the most turns of a row);
    `aggregation`: how the batch's tokens share the loss (LOSS_AGGREGATIONS).
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
        by_row.setdefault(seq.row, []).append(seq)
    agent_tokens = np.zeros(table.num_rows, dtype=np.int64)
    for row, seqs in by_row.items():
        agent_tokens[row] = sum(int(seq.agent_mask.sum()) for seq in seqs)
    row_weights = torch.from_numpy(token_weights_per_row(agent_tokens, aggregation))
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


def token_weights_per_row(agent_tokens: np.ndarray, aggregation: str) -> np.ndarray:
    """The weight of each agent token of each trajectory, from its agent-token count. (n,) float32."""
    if aggregation == "token_mean":
        return np.ones(agent_tokens.shape, dtype=np.float32)
    if aggregation == "trajectory_mean":
        return (1.0 / np.maximum(agent_tokens, 1)).astype(np.float32)
    raise ValueError(f"loss aggregation must be one of {LOSS_AGGREGATIONS}, got {aggregation!r}")


def staleness(table: pa.Table, trainer_version: int) -> np.ndarray:
    """Versions between the trainer and the oldest token of each trajectory. Shape (n,), int64."""
    return trainer_version - table["min_policy_version"].to_numpy().astype(np.int64)
