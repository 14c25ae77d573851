"""Arrow batch -> padded tensors: multi-turn credit, masks, merging of turns, micro-batches."""

import numpy as np
import pytest
import torch

from dartflow.tasks.models.agreement import policy_token_logprobs
from dartflow.tasks.training.batching import build_micro_batches, staleness, trajectory_sequences, whole_transcript
from dartflow.tasks.training.checkpoints import load_policy
from dartflow.tasks.training.logprobs import agent_token_logprobs, head_matches_forward

from training_helpers import multi_turn_records, table, trajectory, turn


def test_turns_that_extend_the_previous_context_become_one_sequence_with_only_agent_tokens_in_the_mask():
    record = trajectory([
        turn([5, 6, 7], [8, 9], [-0.1, -0.2]),
        turn([5, 6, 7, 8, 9, 10, 11], [12], [-0.3]),  # observation 10, 11 then the answer 12
    ])
    (sequence,) = trajectory_sequences(table([record]))
    assert sequence.token_ids.tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert sequence.agent_mask.tolist() == [False, False, False, True, True, False, False, True]
    assert sequence.behavior_logprobs.tolist() == pytest.approx([0, 0, 0, -0.1, -0.2, 0, 0, -0.3])


def test_a_turn_whose_prompt_rewrites_the_history_starts_a_new_sequence():
    record = trajectory([turn([5, 6], [8, 9]), turn([5, 6, 99, 10], [12])])  # 8, 9 re-tokenized as 99
    first, second = trajectory_sequences(table([record]))
    assert first.token_ids.tolist() == [5, 6, 8, 9] and second.token_ids.tolist() == [5, 6, 99, 10, 12]
    assert second.agent_mask.tolist() == [False, False, False, False, True]


def test_a_response_without_a_prompt_cannot_train_its_first_token():
    (sequence,) = trajectory_sequences(table([trajectory([turn([], [4, 5, 6])])]))
    assert sequence.agent_mask.tolist() == [False, True, True]


def test_every_agent_token_of_every_turn_gets_its_trajectorys_advantage():
    records = [
        trajectory([turn([1, 2], [3, 4]), turn([1, 2, 3, 4, 9], [5])], group="a", reward=1.0),
        trajectory([turn([1, 2], [7])], group="a", reward=0.0),
    ]
    (micro_batch,) = build_micro_batches(table(records), torch.tensor([0.5, -0.5]), micro_batch_size=2, pad_token_id=0)
    assert micro_batch.input_ids.tolist() == [[1, 2, 3, 4, 9, 5], [1, 2, 7, 0, 0, 0]]
    assert micro_batch.advantages.tolist() == [[0, 0, 0.5, 0.5, 0, 0.5], [0, 0, -0.5, 0, 0, 0]]
    assert micro_batch.num_loss_tokens == 4 and micro_batch.num_input_tokens == 9


def test_whole_transcript_puts_every_token_but_the_first_of_each_sequence_in_the_loss_padding_excluded():
    records = [
        trajectory([turn([1, 2], [3, 4]), turn([1, 2, 3, 4, 9], [5])], group="a"),
        trajectory([turn([1, 2], [7])], group="a"),
    ]
    (micro_batch,) = build_micro_batches(table(records), torch.zeros(2), micro_batch_size=2, pad_token_id=0)
    whole = whole_transcript(micro_batch)
    assert whole.loss_mask.tolist() == [[False, True, True, True, True, True], [False, True, True, False, False, False]]
    assert whole.token_weights.tolist() == [[0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert whole.num_loss_tokens == 7 and torch.equal(whole.input_ids, micro_batch.input_ids)


def test_per_turn_advantages_reach_each_turns_own_tokens_also_across_a_sequence_split():
    records = [
        trajectory([turn([1, 2], [3, 4]), turn([1, 2, 3, 4, 9], [5]), turn([7, 7], [6])], group="a", reward=1.0),
        trajectory([turn([1, 2], [7])], group="a", reward=0.0),
    ]  # row 0's third turn rewrites the history: a second sequence of the same row
    per_turn = torch.tensor([[0.5, -0.25, 2.0], [-1.0, 0.0, 0.0]])
    micro_batch, = build_micro_batches(table(records), per_turn, micro_batch_size=2, pad_token_id=0)
    assert micro_batch.input_ids.tolist() == [[1, 2, 3, 4, 9, 5], [7, 7, 6, 0, 0, 0], [1, 2, 7, 0, 0, 0]]
    assert micro_batch.advantages.tolist() == [
        [0, 0, 0.5, 0.5, 0, -0.25], [0, 0, 2.0, 0, 0, 0], [0, 0, -1.0, 0, 0, 0],
    ]


def test_per_turn_advantages_must_cover_every_turn():
    records = [trajectory([turn([1], [2]), turn([1, 2, 3], [4])])]
    with pytest.raises(ValueError, match="advantages has shape"):
        build_micro_batches(table(records), torch.zeros((1, 1)), micro_batch_size=1, pad_token_id=0)


def test_micro_batches_hold_micro_batch_size_trajectories_longest_first():
    records = multi_turn_records(groups=1, group_size=5, vocab_size=50, seed=3)
    batch = table(records)
    micro_batches = build_micro_batches(batch, torch.arange(5.0), micro_batch_size=2, pad_token_id=0)
    assert [len(set(mb.rows.tolist())) for mb in micro_batches] == [2, 2, 1]
    assert sorted(row for mb in micro_batches for row in set(mb.rows.tolist())) == [0, 1, 2, 3, 4]
    widths = [mb.input_ids.shape[1] for mb in micro_batches]
    assert widths == sorted(widths, reverse=True)
    total = sum(len(t.response_token_ids) for r in records for t in r.turns)
    assert sum(mb.num_loss_tokens for mb in micro_batches) == total


def test_a_sliced_table_reads_its_own_rows():
    batch = table([trajectory([turn([1, 2], [3])]), trajectory([turn([4, 5], [6, 7])])])
    (sequence,) = trajectory_sequences(batch.slice(1, 1))
    assert sequence.token_ids.tolist() == [4, 5, 6, 7]


def test_staleness_is_trainer_version_minus_oldest_token_version():
    batch = table([trajectory([turn([1], [2], version=v)]) for v in (3, 1, 0)])
    assert staleness(batch, 3).tolist() == [0, 2, 3]


def test_padded_micro_batch_log_probs_equal_each_sequence_scored_alone(tiny_model_dir):
    model = load_policy(tiny_model_dir)
    assert head_matches_forward(model)
    batch = table(multi_turn_records(groups=1, group_size=3, vocab_size=1024, seed=1))
    (padded,) = build_micro_batches(batch, torch.zeros(3), micro_batch_size=3, pad_token_id=0)
    with torch.no_grad():
        together, _ = agent_token_logprobs(model, padded)
        alone = torch.cat([
            agent_token_logprobs(model, build_micro_batches(batch.slice(row, 1), torch.zeros(1), micro_batch_size=1, pad_token_id=0)[0])[0]
            for row in padded.rows.tolist()
        ])
        full, _ = agent_token_logprobs(model, padded, full_logits=True)
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, full, atol=1e-5)
    # and against the transformers helper the engine agreement checks use, on one sequence
    sequence = trajectory_sequences(batch.slice(0, 1))[0]
    expected = torch.tensor(policy_token_logprobs(model, sequence.token_ids.tolist()))[sequence.agent_mask[1:]]
    first_row = padded.rows.tolist().index(0)
    start = int(padded.loss_mask[:first_row].sum())
    assert torch.allclose(together[start : start + expected.numel()], expected, atol=1e-5)


def test_token_weights_by_hand_for_both_aggregations():
    from dartflow.tasks.training.batching import token_weights_per_row

    agent_tokens = np.array([2, 8, 0])
    assert token_weights_per_row(agent_tokens, "token_mean").tolist() == [1.0, 1.0, 1.0]
    assert token_weights_per_row(agent_tokens, "trajectory_mean").tolist() == [0.5, 0.125, 1.0]
    with pytest.raises(ValueError, match="loss aggregation must be one of"):
        token_weights_per_row(agent_tokens, "sequence_sum")


def test_trajectory_mean_spreads_one_unit_of_weight_over_each_trajectorys_agent_tokens():
    short = trajectory([turn([5, 6, 7], [8, 9], [-0.1, -0.2])])  # 2 agent tokens
    long = trajectory([turn([5, 6], [8], [-0.1]), turn([5, 6, 8, 10], [11, 12], [-0.2, -0.3])])  # 3 agent tokens
    batch = table([short, long])
    for aggregation, expected_short, expected_long in (("token_mean", 1.0, 1.0), ("trajectory_mean", 1 / 2, 1 / 3)):
        (micro_batch,) = build_micro_batches(
            batch, torch.tensor([1.0, -1.0]), micro_batch_size=2, pad_token_id=0, aggregation=aggregation
        )
        weights = {int(row): micro_batch.token_weights[i][micro_batch.loss_mask[i]].tolist()
                   for i, row in enumerate(micro_batch.rows)}
        assert weights[0] == pytest.approx([expected_short] * 2)
        assert weights[1] == pytest.approx([expected_long] * 3)
        assert float(micro_batch.token_weights[~micro_batch.loss_mask].abs().sum()) == 0.0
    assert float(micro_batch.token_weights.sum()) == pytest.approx(2.0)  # one per trajectory
