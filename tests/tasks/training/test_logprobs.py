"""The trainer scores tokens at the rollout's sampling temperature: log softmax(logits / T).

The engine's behaviour log-probs are of the tempered distribution (tests/tasks/rollout/test_engine.py
checks that, and that the trainer's log-probs match them); here: the math by hand, on the tiny
model, and through `Trainer.train_step` on every path that computes log-probs.
"""

import math

import pytest
import torch

from dartflow.tasks.training.batching import build_micro_batches
from dartflow.tasks.training.checkpoints import load_policy
from dartflow.tasks.training.logprobs import agent_token_logprobs, distribution_entropy, tempered_logits
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table, trajectory, turn

TEMPERATURE = 0.7


def test_tempered_log_probs_by_hand():
    # T = 0.5 doubles the logits: [0, ln(3)/2] -> [0, ln 3] -> probabilities [1/4, 3/4].
    logits = torch.tensor([[0.0, math.log(3) / 2], [0.0, math.log(3) / 2]])  # (N=2, V=2)
    targets = torch.tensor([1, 0])  # (N,)
    scaled = tempered_logits(logits, 0.5)
    logprobs = scaled.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    assert logprobs.tolist() == pytest.approx([math.log(3 / 4), math.log(1 / 4)])
    assert distribution_entropy(scaled[0]).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert torch.equal(tempered_logits(logits, 1.0), logits)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        tempered_logits(logits, 0.0)


def test_agent_token_log_probs_are_log_softmax_of_logits_over_t_at_the_targets(tiny_model_dir):
    model = load_policy(tiny_model_dir)
    batch = table(multi_turn_records(groups=1, group_size=3, vocab_size=1024, seed=2))
    (micro_batch,) = build_micro_batches(batch, torch.zeros(3), micro_batch_size=3, pad_token_id=0)
    rows, cols = micro_batch.loss_mask.nonzero(as_tuple=True)  # (N,), (N,)
    with torch.no_grad():
        logits = model(input_ids=micro_batch.input_ids).logits[rows, cols - 1].float()  # (N, V)
        targets = micro_batch.input_ids[rows, cols]  # (N,)
        expected = torch.log_softmax(logits / TEMPERATURE, -1).gather(1, targets[:, None])[:, 0]  # (N,)
        expected_entropy = -(torch.softmax(logits / TEMPERATURE, -1) * torch.log_softmax(logits / TEMPERATURE, -1)).sum(-1)
        untempered, _ = agent_token_logprobs(model, micro_batch)
        for full_logits in (False, True):
            logprobs, entropy = agent_token_logprobs(
                model, micro_batch, entropy=True, full_logits=full_logits, temperature=TEMPERATURE
            )
            assert torch.allclose(logprobs, expected, atol=1e-5)
            assert torch.allclose(entropy, expected_entropy, atol=1e-4)
    assert (untempered - expected).abs().max() > 0.1  # T = 0.7 is another distribution here


def tempered_batch(model_dir, temperature: float):
    """Random multi-turn rows whose behaviour log-probs are the tiny model's at `temperature`."""
    model = load_policy(model_dir)
    records = multi_turn_records(groups=2, group_size=2, vocab_size=1024, seed=3)
    tempered = []
    for record in records:
        (micro_batch,) = build_micro_batches(table([record]), torch.zeros(1), micro_batch_size=1, pad_token_id=0)
        with torch.no_grad():
            logprobs = agent_token_logprobs(model, micro_batch, temperature=temperature)[0].tolist()  # (N,) in turn order
        turns = []
        for old in record.turns:
            count = len(old.response_token_ids)
            turns.append(turn(old.prompt_token_ids, old.response_token_ids, logprobs[:count]))
            logprobs = logprobs[count:]
        assert not logprobs
        tempered.append(trajectory(turns, reward=record.reward, group=record.group_id))
    return table(tempered)


TRAIN_PATHS = {
    "reuse": ({}, {}),
    "recompute": ({"proximal_logprobs": "recompute"}, {}),
    "two updates": ({"updates_per_batch": 2}, {}),
    "turn selection": ({}, {"keep_turn_fraction": 0.5}),
}


@pytest.mark.parametrize("path", TRAIN_PATHS)
def test_train_step_scores_at_the_settings_temperature(tiny_model_dir, tmp_path, path):
    settings_extra, step_extra = TRAIN_PATHS[path]
    batch = tempered_batch(tiny_model_dir, TEMPERATURE)
    kls = {}
    for temperature in (TEMPERATURE, 1.0):
        settings = TrainerSettings(
            lr=1e-6, batch_size=4, micro_batch_size=2, kl_coef=0.1, entropy_coef=0.01, temperature=temperature,
            **settings_extra,
        )
        trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path / str(temperature), settings=settings)
        report = trainer.train_step(batch, **step_extra)
        assert not report.skipped
        kls[temperature] = report.metrics["train/behavior_approx_kl"]
        if temperature == TEMPERATURE:
            # Current vs proximal, both at T: ~0 on a first update, 9e-7 after one at lr 1e-6; 5e-3
            # measured when the current log-probs are scored at T = 1 instead.
            assert report.metrics["train/approx_kl"] < 1e-4
        if temperature == TEMPERATURE and path == "reuse":
            # The frozen reference is scored at the same T: at the first step it is the policy.
            assert report.metrics["train/kl_ref"] < 1e-9
            expected_entropy = tempered_mean_entropy(tiny_model_dir, batch, TEMPERATURE)
            assert report.metrics["train/entropy"] == pytest.approx(expected_entropy, rel=1e-4)
    print(f"{path}: behavior_approx_kl at T={TEMPERATURE}: {kls[TEMPERATURE]:.2e}, at T=1: {kls[1.0]:.2e}")
    assert kls[TEMPERATURE] < 1e-9
    assert kls[1.0] > 1e-3


def tempered_mean_entropy(model_dir, batch, temperature: float) -> float:
    model = load_policy(model_dir)
    (micro_batch,) = build_micro_batches(batch, torch.zeros(batch.num_rows), micro_batch_size=batch.num_rows, pad_token_id=0)
    with torch.no_grad():
        _, entropy = agent_token_logprobs(model, micro_batch, entropy=True, temperature=temperature)
    return float(entropy.mean())


def test_bc_steps_score_at_temperature_1(tiny_model_dir, tmp_path):
    """Behaviour cloning is the plain NLL of the demonstrations, whatever the rollout's temperature."""
    batch = table(multi_turn_records(groups=1, group_size=2, vocab_size=1024, seed=4))
    (micro_batch,) = build_micro_batches(batch, torch.zeros(2), micro_batch_size=2, pad_token_id=0)
    with torch.no_grad():
        expected_nll = -float(agent_token_logprobs(load_policy(tiny_model_dir), micro_batch)[0].mean())
    settings = TrainerSettings(batch_size=2, micro_batch_size=2, temperature=TEMPERATURE)
    report = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=settings).bc_step(batch)
    assert report.metrics["train/bc_loss"] == pytest.approx(expected_nll, rel=1e-5)
