"""High-entropy step selection inside the train step (issue 7): which turns of a batch train.

The turns where the policy is most uncertain carry most of the learning signal (Wang et al. 2025,
https://arxiv.org/abs/2506.01939, at token level; here at the level of agent turns): each turn's
mean token entropy under the start-of-step (proximal) policy ranks it, and only the top fraction of
the batch's turns trains (`dartflow.tasks.curation.selection.high_entropy_turns` picks them).
The entropies come from the logits of the proximal pass (a no-grad forward of the start-of-step
policy over the batch): free when the step runs that pass anyway (updates_per_batch > 1, or
proximal_logprobs "recompute"), one extra forward otherwise, since the turns must be chosen over
the whole batch before the first micro-batch's backward.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from torch import Tensor

from dartflow.tasks.curation.selection import high_entropy_turns
from dartflow.tasks.training.batching import MicroBatch


def turn_counts(table: pa.Table) -> np.ndarray:
    """Number of turns of each row. (n,) int64."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    return table["prompt_token_ids"].combine_chunks().value_lengths().to_numpy().astype(np.int64)


def turn_mean_entropies(
    micro_batches: list[MicroBatch], token_entropies: list[Tensor], counts: np.ndarray
) -> list[np.ndarray]:
    """Mean entropy of each turn of each row, over the turn's agent tokens (NaN for a turn without
    one, e.g. an empty response). `token_entropies[i]`: (N_i,), ordered like micro-batch i's
    `loss_mask.nonzero()`. A row split over several sequences or micro-batches adds up across them.
    Returns one (turns of the row,) float64 array per row."""
    most = int(counts.max()) if counts.size else 0
    sums = np.zeros((counts.size, most))  # (n, turns)
    tokens = np.zeros((counts.size, most))  # (n, turns)
    for mb, entropy in zip(micro_batches, token_entropies):
        seq, col = mb.loss_mask.nonzero(as_tuple=True)  # (N,), (N,)
        rows, turns = mb.rows[seq].numpy(), mb.token_turns[seq, col].numpy()
        np.add.at(sums, (rows, turns), entropy.detach().double().cpu().numpy())
        np.add.at(tokens, (rows, turns), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(tokens > 0, sums / tokens, np.nan)
    return [means[row, : counts[row]] for row in range(counts.size)]


def select_turns(entropies: list[np.ndarray], keep_fraction: float) -> tuple[list[np.ndarray], float]:
    """(per row, a bool per turn: kept; the fraction of the batch's turns kept): the batch's
    (row, turn) entropies flattened in batch order, ranked by `high_entropy_turns`."""
    flat = np.concatenate(entropies) if entropies else np.zeros(0)
    mask, kept_fraction = high_entropy_turns(flat, keep_fraction)
    offsets = np.cumsum([0] + [e.size for e in entropies])
    return [mask[offsets[row] : offsets[row + 1]] for row in range(len(entropies))], kept_fraction
