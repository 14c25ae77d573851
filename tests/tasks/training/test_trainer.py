"""The train step end to end on a tiny policy: learning signal, skipped steps, metrics, options."""

import math

import pytest
import torch

from dartflow.tasks.models.agreement import policy_token_logprobs
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table

SETTINGS = TrainerSettings(batch_size=4, micro_batch_size=2, lr=1e-3, advantage="grpo_no_std")
REQUIRED_METRICS = {
    "loss", "clip_frac", "approx_kl", "entropy", "is_weight_mean", "is_weight_max", "is_truncated_frac",
    "staleness_mean", "staleness_max", "grad_norm", "tokens", "lr", "zero_signal_group_frac", "skipped",
}


def on_policy(records, model):
    """Set every turn's behaviour log-probs to the model's own (a fresh, on-policy rollout)."""
    for record in records:
        for t in record.turns:
            sequence = list(t.prompt_token_ids) + list(t.response_token_ids)
            t.behavior_logprobs = policy_token_logprobs(model, sequence)[len(t.prompt_token_ids) - 1 :]
    return records


def mean_action_logprob(model, record) -> float:
    values = []
    for t in record.turns:
        sequence = list(t.prompt_token_ids) + list(t.response_token_ids)
        values += policy_token_logprobs(model, sequence)[len(t.prompt_token_ids) - 1 :]
    return sum(values) / len(values)


def weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.policy.named_parameters()}


@pytest.fixture
def trainer(tiny_model_dir, tmp_path):
    return Trainer(tiny_model_dir, checkpoint_root=tmp_path / "checkpoints", settings=SETTINGS)


def rewarded_batch(trainer, rewards=(1.0, 0.0, 0.0, 1.0), seed=0):
    records = multi_turn_records(groups=1, group_size=len(rewards), vocab_size=1024, seed=seed, turns=(2, 2))
    for record, reward in zip(records, rewards):
        record.reward = reward
    return records, table(on_policy(records, trainer.policy))


def test_a_few_steps_with_positive_advantages_raise_the_log_prob_of_those_actions(trainer):
    records, batch = rewarded_batch(trainer)
    before = [mean_action_logprob(trainer.policy, r) for r in records]
    for _ in range(3):
        report = trainer.train_step(batch)
        assert not report.skipped
    after = [mean_action_logprob(trainer.policy, r) for r in records]
    assert after[0] > before[0] + 0.01 and after[3] > before[3] + 0.01  # advantage +0.5
    assert after[1] < before[1] and after[2] < before[2]  # advantage -0.5
    assert trainer.version == 3 and report.start_version == 2 and report.version == 3


def test_a_nan_in_the_loss_skips_the_step_and_leaves_the_weights_untouched(trainer):
    records, _ = rewarded_batch(trainer)
    records[2].reward = math.nan  # its group's advantages, hence the loss, become NaN
    before = weights(trainer)
    report = trainer.train_step(table(records))
    assert report.skipped and report.skip_reason == "non-finite loss"
    assert report.metrics["train/skipped"] == 1.0 and math.isnan(report.metrics["train/loss"])
    assert trainer.version == 0 and report.version == report.start_version == 0
    assert all(torch.equal(before[name], p) for name, p in trainer.policy.named_parameters())
    assert all(p.grad is None for p in trainer.policy.parameters()) and not trainer.optimizer.state
    _, good = rewarded_batch(trainer)
    assert not trainer.train_step(good).skipped and trainer.version == 1


def test_a_non_finite_gradient_skips_the_step_too(trainer):
    _, batch = rewarded_batch(trainer)
    before = weights(trainer)
    hook = trainer.policy.model.layers[0].mlp.up_proj.weight.register_hook(lambda grad: grad * math.inf)
    report = trainer.train_step(batch)
    hook.remove()
    assert report.skipped and report.skip_reason == "non-finite gradient" and trainer.version == 0
    assert all(torch.equal(before[name], p) for name, p in trainer.policy.named_parameters())


def test_metrics_of_a_batch_mixing_fresh_and_stale_trajectories(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS, version=3)
    records = multi_turn_records(groups=2, group_size=2, vocab_size=1024, seed=4, turns=(1, 2))
    on_policy(records, trainer.policy)
    for record, version in zip(records, (3, 3, 1, 0)):
        for t in record.turns:
            t.min_policy_version = version
    # The two stale trajectories were sampled by a policy that found their tokens far less likely
    # (log-prob -30): exp(proximal + 30) is far above the cap, so each of their weights is the cap.
    for record in records[2:]:
        for t in record.turns:
            t.behavior_logprobs = [-30.0] * len(t.response_token_ids)
    for record, reward in zip(records, (1.0, 0.0, 1.0, 1.0)):
        record.reward = reward
    fresh = sum(len(t.response_token_ids) for r in records[:2] for t in r.turns)
    stale = sum(len(t.response_token_ids) for r in records[2:] for t in r.turns)
    cap = SETTINGS.importance_weight_cap

    metrics = trainer.train_step(table(records)).metrics
    assert set(metrics) >= {f"train/{name}" for name in REQUIRED_METRICS}
    assert all(name.startswith("train/") for name in metrics)
    assert metrics["train/staleness_mean"] == pytest.approx((0 + 0 + 2 + 3) / 4)
    assert metrics["train/staleness_max"] == 3
    assert metrics["train/tokens"] == fresh + stale
    assert metrics["train/is_weight_mean"] == pytest.approx((fresh * 1.0 + stale * cap) / (fresh + stale), rel=1e-4)
    assert metrics["train/is_weight_max"] == pytest.approx(cap)
    assert metrics["train/is_truncated_frac"] == pytest.approx(stale / (fresh + stale))
    assert metrics["train/zero_signal_group_frac"] == 0.5  # group 1: rewards 1, 1
    assert metrics["train/clip_frac"] == 0.0 and metrics["train/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["train/entropy"] > 0 and metrics["train/grad_norm"] > 0
    assert trainer.version == 4


@pytest.mark.parametrize("option", ["micro_batches", "proximal"])
def test_accumulation_and_proximal_recompute_give_the_same_update(tiny_model_dir, tmp_path, option):
    """micro_batch_size 1 == the whole batch at once; a separate no-grad proximal pass == reuse."""
    variants = {
        "micro_batches": [{"micro_batch_size": 4}, {"micro_batch_size": 1}],
        "proximal": [{"proximal_logprobs": "reuse"}, {"proximal_logprobs": "recompute"}],
    }[option]
    trainers = [
        Trainer(tiny_model_dir, checkpoint_root=tmp_path / str(i), settings=TrainerSettings(**{**SETTINGS.to_dict(), **v}))
        for i, v in enumerate(variants)
    ]
    _, batch = rewarded_batch(trainers[0])
    reports = [t.train_step(batch) for t in trainers]
    for name in ("train/loss", "train/grad_norm", "train/is_weight_mean", "train/entropy"):
        assert reports[0].metrics[name] == pytest.approx(reports[1].metrics[name], rel=1e-5, abs=1e-7)
    # After AdamW's first step exp_avg = (1 - beta1) * gradient: the two gradients agree.
    for p0, p1 in zip(trainers[0].policy.parameters(), trainers[1].policy.parameters()):
        g0, g1 = trainers[0].optimizer.state[p0]["exp_avg"], trainers[1].optimizer.state[p1]["exp_avg"]
        assert torch.allclose(g0, g1, atol=1e-8, rtol=1e-4)


def test_kl_to_the_reference_starts_at_zero_and_grows_as_the_policy_moves(tiny_model_dir, tmp_path):
    settings = TrainerSettings(**{**SETTINGS.to_dict(), "kl_coef": 0.1, "entropy_coef": 0.01})
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=settings)
    _, batch = rewarded_batch(trainer)
    first = trainer.train_step(batch).metrics
    second = trainer.train_step(batch).metrics
    assert first["train/kl_ref"] == pytest.approx(0.0, abs=1e-7) and second["train/kl_ref"] > 1e-7
    assert all(not p.requires_grad for p in trainer.reference.parameters())


def test_an_empty_batch_is_skipped_not_stepped(trainer):
    _, batch = rewarded_batch(trainer)
    report = trainer.train_step(batch.slice(0, 0))
    assert report.skipped and report.skip_reason == "no agent tokens" and trainer.version == 0


def test_the_lr_schedule_follows_rl_steps(tiny_model_dir, tmp_path):
    settings = TrainerSettings(**{**SETTINGS.to_dict(), "warmup_steps": 2, "lr_schedule": "linear", "steps": 4})
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=settings)
    _, batch = rewarded_batch(trainer)
    lrs = [trainer.train_step(batch).metrics["train/lr"] for _ in range(4)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])


def test_a_sequence_longer_than_the_model_accepts_is_refused(trainer):
    records, _ = rewarded_batch(trainer)
    records[0].turns[0].prompt_token_ids = list(range(3, 3000))
    with pytest.raises(ValueError, match="2048"):
        trainer.train_step(table(records))


def test_batches_from_the_trajectory_store_train_and_are_recorded_under_the_start_version(tiny_model_dir, tmp_path):
    from dartflow.storage import TrajectoryStore

    store = TrajectoryStore(str(tmp_path / "store"), run_id="run", compact_every_appends=0)
    store.append(multi_turn_records(groups=2, group_size=2, vocab_size=1024, seed=7, behavior_logprob=-2.0))
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path / "checkpoints", settings=SETTINGS)
    batch = store.next_batch(trainer.version, max_staleness=2, batch_size=4)
    report = trainer.train_step(batch)
    assert not report.skipped and report.metrics["train/trajectories"] == 4
    store.record_consumption(report.start_version, batch)
    assert store.next_batch(trainer.version, max_staleness=2, batch_size=4).num_rows == 0
    assert sorted(store.lineage(0)["trajectory_id"].to_pylist()) == sorted(batch["trajectory_id"].to_pylist())


def test_several_updates_per_batch_move_further_clip_against_the_start_and_count_one_version(tiny_model_dir, tmp_path):
    settings = {**SETTINGS.to_dict(), "lr": 2e-4}
    one, three = (
        Trainer(tiny_model_dir, checkpoint_root=tmp_path / str(n), settings=TrainerSettings(**{**settings, "updates_per_batch": n}))
        for n in (1, 3)
    )
    records, batch = rewarded_batch(one)
    before = mean_action_logprob(one.policy, records[0])  # advantage +0.5
    first, report = one.train_step(batch), three.train_step(batch)
    assert first.metrics["train/updates"] == 1 and report.metrics["train/updates"] == 3
    assert three.version == one.version == 1 and three.rl_steps == 1
    gain_one = mean_action_logprob(one.policy, records[0]) - before
    gain_three = mean_action_logprob(three.policy, records[0]) - before
    assert gain_three > 1.5 * gain_one > 0
    # The last update's ratios are measured against the batch's start, so some have left the clip range;
    # a first update always has ratio 1 (clip_frac 0).
    assert first.metrics["train/clip_frac"] == 0 and report.metrics["train/clip_frac"] > 0


def test_a_later_update_that_is_skipped_is_reported_and_the_earlier_ones_stay(tiny_model_dir, tmp_path, monkeypatch):
    from dartflow.tasks.training import trainer as trainer_module
    from dartflow.tasks.training.step import StepOutcome

    real_step, calls = trainer_module.policy_gradient_step, []

    def second_update_fails(*args, **kwargs):
        calls.append(kwargs["proximal"])
        if len(calls) == 2:
            return StepOutcome(False, {"loss": math.nan}, "non-finite loss")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "policy_gradient_step", second_update_fails)
    three = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=TrainerSettings(**{**SETTINGS.to_dict(), "updates_per_batch": 3}))
    _, batch = rewarded_batch(three)
    before = weights(three)
    report = three.train_step(batch)
    assert len(calls) == 2 and all(proximal is not None for proximal in calls)  # the start's log-probs, fixed
    assert not report.skipped and three.version == 1
    assert report.metrics["train/updates"] == 1 and report.metrics["train/updates_skipped"] == 1
    assert any(not torch.equal(before[name], p) for name, p in three.policy.named_parameters())
