"""Per-turn entropies and kept-turn masks of a batch, against hand computations."""

import math

import numpy as np
import pytest
import torch

from dartflow.tasks.training.batching import build_micro_batches, rollout_staleness
from dartflow.tasks.training.turns import select_turns, turn_counts, turn_mean_entropies

from training_helpers import table, trajectory, turn


def hand_batch():
    """Row 0: three turns, the third rewrites the history (a second sequence); row 1: an empty
    first response, then one token."""
    return table([
        trajectory([turn([5, 6, 7], [8, 9]), turn([5, 6, 7, 8, 9, 10], [11]), turn([20, 21], [22, 23, 24])], reward=1.0),
        trajectory([turn([1, 2], []), turn([1, 2, 3], [4])], reward=0.0),
    ])


def test_turn_entropies_average_each_turns_tokens_across_sequences_and_micro_batches():
    batch = hand_batch()
    micro_batches = build_micro_batches(batch, torch.zeros(2), micro_batch_size=1, pad_token_id=0)
    # micro-batch 0 = row 0: tokens 8, 9 (turn 0), 11 (turn 1) | 22, 23, 24 (turn 2); micro-batch 1 = row 1: token 4 (turn 1)
    token_entropies = [torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), torch.tensor([7.0])]
    row0, row1 = turn_mean_entropies(micro_batches, token_entropies, turn_counts(batch))
    assert row0.tolist() == [1.5, 3.0, 5.0]
    assert math.isnan(row1[0]) and row1[1] == 7.0  # an empty response has no entropy

    kept, fraction = select_turns([row0, row1], 0.4)  # ceil(0.4 x 5) = 2: entropies 7 and 5; NaN ranks last
    assert [k.tolist() for k in kept] == [[False, False, True], [False, True]] and fraction == pytest.approx(0.4)


def test_only_the_kept_turns_tokens_stay_in_the_mask_and_the_aggregation_counts_only_them():
    batch = hand_batch()
    kept = [np.array([False, False, True]), np.array([False, True])]
    options = {"micro_batch_size": 1, "pad_token_id": 0, "aggregation": "trajectory_mean"}
    full = build_micro_batches(batch, torch.tensor([0.5, -0.5]), **options)
    selected = build_micro_batches(batch, torch.tensor([0.5, -0.5]), kept_turns=kept, **options)
    row0 = selected[0]
    assert row0.input_ids.tolist() == full[0].input_ids.tolist()  # same sequences, same shapes
    # the second sequence is right-padded to the first's 7 tokens
    assert row0.loss_mask.tolist() == [[False] * 7, [False, False, True, True, True, False, False]]
    assert row0.token_turns.tolist() == [[-1] * 7, [-1, -1, 2, 2, 2, -1, -1]]
    assert row0.advantages.tolist() == [[0.0] * 7, [0, 0, 0.5, 0.5, 0.5, 0, 0]]
    assert row0.token_weights[1].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0])  # 1 / kept tokens, not 1 / 6
    assert selected[1].loss_mask.tolist() == full[1].loss_mask.tolist()  # row 1's only token is in its kept turn


def test_trajectory_weights_scale_each_rows_token_weights():
    batch = hand_batch()
    weights = np.array([2.0, 0.5])
    (mb,) = build_micro_batches(batch, torch.zeros(2), micro_batch_size=2, pad_token_id=0, trajectory_weights=weights)
    assert mb.rows.tolist() == [0, 0, 1]
    assert mb.token_weights.sum(1).tolist() == pytest.approx([2.0 * 3, 2.0 * 3, 0.5 * 1])


def test_rollout_staleness_leaves_out_pooled_rows():
    batch = hand_batch()
    batch = batch.set_column(batch.schema.get_field_index("source"), "source", [["pool", "rollout"]])
    batch = batch.set_column(batch.schema.get_field_index("min_policy_version"), "min_policy_version", [[0, 4]])
    assert rollout_staleness(batch, 5).tolist() == [1]
    assert rollout_staleness(batch.drop_columns(["source"]), 5).tolist() == [5, 1]
