"""Checkpoints: untied HF folders that transformers and the engine's checks accept, written
atomically, pruned to the last K plus marked ones, and resumable exactly."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from dartflow.tasks.rollout.weight_sync import check_checkpoint_compatible, read_model_config
from dartflow.tasks.training import checkpoints
from dartflow.tasks.training.checkpoints import list_checkpoints, load_policy
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table

SETTINGS = TrainerSettings(
    batch_size=4, micro_batch_size=2, lr=1e-3, lr_schedule="cosine", warmup_steps=2, steps=6, checkpoint_keep=2,
    weight_decay=0.01,
)


def batches(count: int):
    return [table(multi_turn_records(groups=2, group_size=2, vocab_size=1024, seed=s, version=s)) for s in range(count)]


@pytest.fixture(params=["tied", "untied"])
def model_dir(request):
    return request.getfixturevalue({"tied": "tiny_tied_model_dir", "untied": "tiny_model_dir"}[request.param])


def test_a_checkpoint_of_a_tied_trainer_has_its_own_lm_head_and_loads_in_transformers(tiny_tied_model_dir, tmp_path):
    trainer = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path, settings=SETTINGS)
    assert checkpoints.is_tied(trainer.policy)
    v0 = trainer.save_checkpoint()
    trainer.train_step(batches(1)[0])
    v1 = trainer.save_checkpoint()
    assert v1.name == "v000001" and v0.name == "v000000"

    config = json.loads((v1 / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    with safe_open(v1 / "model.safetensors", "pt") as weights:
        head, embedding = weights.get_tensor("lm_head.weight"), weights.get_tensor("model.embed_tokens.weight")
    assert torch.equal(head, embedding) and torch.equal(head, trainer.policy.lm_head.weight)
    # the rollout engine's own checks before an in-place swap from v0 to v1
    check_checkpoint_compatible(read_model_config(v0), read_model_config(v1))

    loaded = load_policy(v1)
    assert not checkpoints.is_tied(loaded)
    input_ids = torch.tensor([[1, 40, 41, 42, 43, 2]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids).logits, trainer.policy(input_ids).logits, atol=1e-6)
    assert (v1 / "tokenizer.json").is_file() and (v1 / "generation_config.json").is_file()


def test_pruning_keeps_the_last_k_and_the_marked_ones(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS)
    for index, batch in enumerate(batches(5)):
        trainer.train_step(batch)
        trainer.save_checkpoint(mark=index == 1, reason="best eval")
        if index == 3:
            trainer.mark_checkpoint(3)
    assert [version for version, _ in list_checkpoints(tmp_path)] == [2, 3, 4, 5]
    assert checkpoints.is_marked(tmp_path / "v000002") and checkpoints.is_marked(tmp_path / "v000003")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000002", "v000003", "v000004", "v000005"]
    with pytest.raises(FileNotFoundError, match="v000001"):
        trainer.mark_checkpoint(1)


def test_a_failed_write_leaves_no_checkpoint_and_no_debris(tiny_model_dir, tmp_path, monkeypatch):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS)
    trainer.save_checkpoint()

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    trainer.train_step(batches(1)[0])
    with pytest.raises(OSError, match="No space"):
        trainer.save_checkpoint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000000"]


def test_leftovers_of_a_crashed_writer_are_removed_when_a_trainer_starts(tiny_model_dir, tmp_path):
    (tmp_path / ".v000007.partial-abc123").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_resume_continues_exactly_like_an_uninterrupted_run(model_dir, tmp_path):
    data = batches(5)
    straight = Trainer(model_dir, checkpoint_root=tmp_path / "straight", settings=SETTINGS)
    straight_reports = [straight.train_step(batch) for batch in data]

    first = Trainer(model_dir, checkpoint_root=tmp_path / "resumed", settings=SETTINGS)
    for batch in data[:2]:
        first.train_step(batch)
    first.save_checkpoint()
    del first
    resumed = Trainer.resume(tmp_path / "resumed")
    assert resumed.version == 2 and resumed.rl_steps == 2
    assert checkpoints.is_tied(resumed.policy) == checkpoints.is_tied(straight.policy)
    resumed_reports = [resumed.train_step(batch) for batch in data[2:]]

    assert resumed.version == straight.version == 5
    for (name, p), q in zip(straight.policy.named_parameters(), resumed.policy.parameters()):
        assert torch.equal(p, q), name
    for a, b in zip(straight_reports[2:], resumed_reports):
        assert a.metrics["train/lr"] == b.metrics["train/lr"]
        assert a.metrics["train/loss"] == b.metrics["train/loss"]


def test_resume_of_a_missing_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Trainer.resume(tmp_path)


def test_a_copied_checkpoint_folder_resumes_with_its_saved_settings(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path / "a", settings=SETTINGS)
    trainer.train_step(batches(1)[0])
    shutil.copytree(trainer.save_checkpoint(), tmp_path / "b" / "v000001")
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.settings == SETTINGS and resumed.version == 1
