"""Trainer-side curation (issue 7): high-entropy turn selection, trajectory weights, pool staleness.

Gradients are compared through AdamW's first-step state: exp_avg = (1 - beta1) x the (clipped)
gradient, so two steps from the same weights with equal exp_avg had equal gradients.
"""

import copy
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from dartflow.tasks.training import trainer as trainer_module
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table, trajectory, turn

SETTINGS = TrainerSettings(batch_size=4, micro_batch_size=2, lr=1e-3, advantage="grpo_no_std")


def make_trainer(model_dir, path, **overrides) -> Trainer:
    return Trainer(model_dir, checkpoint_root=path, settings=TrainerSettings(**{**SETTINGS.to_dict(), **overrides}))


def gradients(trainer) -> list[torch.Tensor]:
    return [trainer.optimizer.state[p]["exp_avg"] for p in trainer.policy.parameters()]


def assert_same_gradients(a, b, *, exact=False):
    for ga, gb in zip(gradients(a), gradients(b), strict=True):
        assert torch.equal(ga, gb) if exact else torch.allclose(ga, gb, rtol=1e-4, atol=1e-9)


def assert_same_weights(a, b):
    assert all(torch.equal(p, q) for p, q in zip(a.policy.parameters(), b.policy.parameters(), strict=True))


def curation_records(seed=0):
    """Two groups of 1-4-turn trajectories, plus one whose third turn rewrites its history (so the
    row is split over two sequences); rewards that give every group a signal."""
    records = multi_turn_records(groups=2, group_size=3, vocab_size=1024, seed=seed, turns=(1, 4))
    split = trajectory(
        [turn([5, 6, 7], [8, 9, 10]), turn([5, 6, 7, 8, 9, 10, 11], [12, 13]), turn([40, 41, 42, 43], [44, 45, 46])],
        group="g1", trajectory_id="split",
    )
    records.append(split)
    for i, record in enumerate(records):
        record.reward = float(i % 2)
    return records


def independent_turn_entropies(model_dir, records) -> dict[tuple[str, int], float]:
    """Mean token entropy of every turn's response, each turn scored alone on its own prompt."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    entropies = {}
    with torch.no_grad():
        for record in records:
            for index, t in enumerate(record.turns):
                ids = list(t.prompt_token_ids) + list(t.response_token_ids)
                logits = model(input_ids=torch.tensor([ids])).logits[0, len(t.prompt_token_ids) - 1 : -1].double()
                token_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
                entropies[(record.trajectory_id, index)] = float(token_entropy.mean())
    return entropies


# ---- high-entropy step selection ---------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_the_kept_turns_are_the_ceil_fraction_highest_entropy_turns_of_the_batch(tiny_model_dir, tmp_path, fraction):
    records = curation_records()
    expected = independent_turn_entropies(tiny_model_dir, records)
    report = make_trainer(tiny_model_dir, tmp_path).train_step(table(records), keep_turn_fraction=fraction)

    assert not report.skipped
    assert set(report.turn_entropies) == {r.trajectory_id for r in records}
    for record in records:
        measured = report.turn_entropies[record.trajectory_id]
        assert measured == pytest.approx([expected[(record.trajectory_id, i)] for i in range(len(record.turns))], rel=1e-4)
    keep = math.ceil(fraction * len(expected))
    top = sorted(expected, key=expected.get, reverse=True)[:keep]
    kept = {(tid, i) for tid, turns in report.kept_turns.items() for i in turns}
    assert kept == set(top)
    assert report.metrics["train/turns_total"] == len(expected)
    assert report.metrics["train/turns_kept_frac"] == pytest.approx(keep / len(expected))
    kept_tokens = sum(
        len(t.response_token_ids) for r in records for i, t in enumerate(r.turns) if (r.trajectory_id, i) in kept
    )
    assert report.metrics["train/tokens"] == kept_tokens


@pytest.mark.parametrize("aggregation, entropy_coef", [("token_mean", 0.0), ("trajectory_mean", 0.01)])
def test_dropped_turns_train_like_context_tokens(tiny_model_dir, tmp_path, aggregation, entropy_coef):
    """A step keeping only some turns == a step on the batch whose dropped turns were never agent
    turns: a later kept turn's prompt still holds their tokens, so the kept tokens are scored on the
    same context, while the dropped ones add nothing to the loss, to the gradient, nor to the token
    count of the normaliser (trajectory credit: a turn's advantage is its trajectory's)."""
    records = curation_records(seed=1)
    selecting = make_trainer(tiny_model_dir, tmp_path / "a", loss_aggregation=aggregation, entropy_coef=entropy_coef)
    report = selecting.train_step(table(records), keep_turn_fraction=0.4)
    kept_count = sum(len(turns) for turns in report.kept_turns.values())
    assert 0 < kept_count < report.metrics["train/turns_total"]

    reduced = copy.deepcopy(records)
    for record in reduced:
        record.turns = [t for i, t in enumerate(record.turns) if i in report.kept_turns[record.trajectory_id]]
        record.min_policy_version = record.max_policy_version = 0  # a row left without turns keeps its group place
    plain = make_trainer(tiny_model_dir, tmp_path / "b", loss_aggregation=aggregation, entropy_coef=entropy_coef)
    expected = plain.train_step(table(reduced))

    assert report.metrics["train/tokens"] == expected.metrics["train/tokens"]
    assert report.metrics["train/loss"] == pytest.approx(expected.metrics["train/loss"], rel=1e-4, abs=1e-7)
    assert_same_gradients(selecting, plain)


def test_several_updates_per_batch_reuse_the_proximal_pass_for_the_entropies(tiny_model_dir, tmp_path, monkeypatch):
    passes = []
    real = trainer_module.proximal_logprobs_and_entropy
    counted = lambda *args, **kwargs: passes.append(1) or real(*args, **kwargs)  # noqa: E731
    monkeypatch.setattr(trainer_module, "proximal_logprobs_and_entropy", counted)
    monkeypatch.setattr(trainer_module, "proximal_logprobs", lambda *a, **k: pytest.fail("a second proximal pass"))
    trainer = make_trainer(tiny_model_dir, tmp_path, updates_per_batch=3)
    report = trainer.train_step(table(curation_records()), keep_turn_fraction=0.5)
    assert passes == [1] and report.metrics["train/updates"] == 3 and trainer.version == 1


def test_with_the_rule_off_the_step_is_bit_for_bit_the_plain_one(tiny_model_dir, tmp_path):
    batch = table(curation_records())
    plain, off, ones = (make_trainer(tiny_model_dir, tmp_path / str(i)) for i in range(3))
    reports = [
        plain.train_step(batch),
        off.train_step(batch, keep_turn_fraction=None),
        ones.train_step(batch, trajectory_weights=np.ones(batch.num_rows)),
    ]
    for other in (off, ones):
        assert_same_weights(plain, other)
        assert_same_gradients(plain, other, exact=True)
    assert reports[0].kept_turns == {} and reports[0].turn_entropies == {}
    assert "train/turns_kept_frac" not in reports[0].metrics and "train/trajectory_weight_mean" not in reports[0].metrics
    assert reports[2].metrics["train/trajectory_weight_mean"] == reports[2].metrics["train/trajectory_weight_max"] == 1.0


def test_keeping_every_turn_trains_like_the_rule_off(tiny_model_dir, tmp_path):
    batch = table(curation_records())
    plain, everything = make_trainer(tiny_model_dir, tmp_path / "a"), make_trainer(tiny_model_dir, tmp_path / "b")
    expected, report = plain.train_step(batch), everything.train_step(batch, keep_turn_fraction=1.0)
    assert report.metrics["train/turns_kept_frac"] == 1.0
    assert report.metrics["train/tokens"] == expected.metrics["train/tokens"]
    assert report.metrics["train/loss"] == pytest.approx(expected.metrics["train/loss"], rel=1e-5, abs=1e-8)
    assert_same_gradients(plain, everything)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_keep_fraction_outside_0_1_is_refused_before_any_work(tiny_model_dir, tmp_path, fraction):
    with pytest.raises(ValueError, match="keep_turn_fraction"):
        make_trainer(tiny_model_dir, tmp_path).train_step(table(curation_records()), keep_turn_fraction=fraction)


# ---- trajectory weights ------------------------------------------------------------------------


def weight_records():
    """g0: rewards 1, 0, 0.5 (the 0.5 row has advantage 0 and is the group's mean, so removing it
    leaves the others' advantages as they are); g1: rewards 1, 0."""
    records = multi_turn_records(groups=2, group_size=3, vocab_size=1024, seed=2, turns=(1, 3))
    records = records[:5]
    for record, reward in zip(records, (1.0, 0.0, 0.5, 1.0, 0.0)):
        record.reward = reward
    return records


@pytest.mark.parametrize("aggregation", ["token_mean", "trajectory_mean"])
def test_weight_zero_equals_the_row_absent(tiny_model_dir, tmp_path, aggregation):
    """Exact under both aggregations: the loss is the weighted token sum / the total token weight,
    so a weight-0 row leaves both. entropy_coef > 0, so the row would move the weights otherwise."""
    records = weight_records()
    weighted, absent, present = (
        make_trainer(tiny_model_dir, tmp_path / str(i), loss_aggregation=aggregation, entropy_coef=0.05) for i in range(3)
    )
    report = weighted.train_step(table(records), trajectory_weights=[1.0, 1.0, 0.0, 1.0, 1.0])
    expected = absent.train_step(table(records[:2] + records[3:]))
    present.train_step(table(records))
    assert report.metrics["train/loss"] == pytest.approx(expected.metrics["train/loss"], rel=1e-5)
    assert_same_gradients(weighted, absent)
    assert not all(torch.allclose(a, b, rtol=1e-4) for a, b in zip(gradients(present), gradients(absent)))
    assert report.metrics["train/trajectory_weight_mean"] == pytest.approx(0.8)
    assert report.metrics["train/trajectory_weight_max"] == 1.0


@pytest.mark.parametrize("aggregation", ["token_mean", "trajectory_mean"])
def test_weight_two_equals_the_rows_twice(tiny_model_dir, tmp_path, aggregation):
    """Group g0 weighted 2 == g0's rows twice in the batch (its reward mean, hence every advantage,
    is unchanged by the copies)."""
    records = weight_records()
    weighted, doubled = (make_trainer(tiny_model_dir, tmp_path / str(i), loss_aggregation=aggregation) for i in range(2))
    report = weighted.train_step(table(records), trajectory_weights=np.array([2.0, 2.0, 2.0, 1.0, 1.0]))
    expected = doubled.train_step(table(records + copy.deepcopy(records[:3])))
    assert report.metrics["train/loss"] == pytest.approx(expected.metrics["train/loss"], rel=1e-5)
    assert_same_gradients(weighted, doubled)


def test_only_relative_weights_matter(tiny_model_dir, tmp_path):
    records = weight_records()
    once, thrice = (make_trainer(tiny_model_dir, tmp_path / str(i)) for i in range(2))
    once.train_step(table(records), trajectory_weights=[0.5, 1.0, 1.5, 1.0, 1.0])
    thrice.train_step(table(records), trajectory_weights=[1.5, 3.0, 4.5, 3.0, 3.0])
    assert_same_gradients(once, thrice)


@pytest.mark.parametrize(
    "weights, problem",
    [([1.0] * 4, "one weight per batch row"), ([[1.0] * 5], "one weight per batch row"),
     ([1.0, -1.0, 1.0, 1.0, 1.0], ">= 0"), ([1.0, math.nan, 1.0, 1.0, 1.0], "finite"),
     ([1.0, 1.0, math.inf, 1.0, 1.0], "finite")],
)
def test_bad_weights_are_refused_with_the_problem_named(tiny_model_dir, tmp_path, weights, problem):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match=f"trajectory_weights.*{problem}"):
        trainer.train_step(table(weight_records()), trajectory_weights=weights)
    assert trainer.version == 0


def test_all_weights_zero_skip_the_step(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    report = trainer.train_step(table(weight_records()), trajectory_weights=np.zeros(5))
    assert report.skipped and trainer.version == 0
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.policy.parameters()))


def test_weights_and_turn_selection_combine(tiny_model_dir, tmp_path):
    records = curation_records()
    trainer = make_trainer(tiny_model_dir, tmp_path, loss_aggregation="trajectory_mean")
    weights = np.linspace(0.0, 2.0, len(records))
    report = trainer.train_step(table(records), keep_turn_fraction=0.5, trajectory_weights=weights)
    assert not report.skipped and report.metrics["train/trajectory_weight_max"] == 2.0
    assert report.metrics["train/turns_kept_frac"] >= 0.5


# ---- staleness of rollouts only ----------------------------------------------------------------


def staleness_batch(sources):
    records = multi_turn_records(groups=1, group_size=3, vocab_size=1024, seed=5, turns=(1, 2))
    for record, version, source in zip(records, (3, 1, 0), sources):
        record.source = source
        for t in record.turns:
            t.min_policy_version = version
    return table(records)  # trainer version 3: staleness 0, 2, 3


@pytest.mark.parametrize(
    "sources, mean, most",
    [(("rollout", "rollout", "pool"), 1.0, 2), (("rollout", "rollout", "rollout"), 5 / 3, 3), (("pool",) * 3, 0.0, 0)],
)
def test_pooled_rows_are_left_out_of_the_staleness_metrics(tiny_model_dir, tmp_path, sources, mean, most):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS, version=3)
    metrics = trainer.train_step(staleness_batch(sources)).metrics
    assert metrics["train/staleness_mean"] == pytest.approx(mean) and metrics["train/staleness_max"] == most


def test_a_batch_without_a_source_column_is_all_rollouts(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS, version=3)
    batch = staleness_batch(("rollout", "rollout", "pool"))
    metrics = trainer.train_step(batch.drop_columns(["source"])).metrics
    assert metrics["train/staleness_mean"] == pytest.approx(5 / 3) and metrics["train/staleness_max"] == 3
