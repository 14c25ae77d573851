"""LoRA (training.lora): only the adapters train, checkpoints carry merged weights for the engine
plus the adapter, resume continues exactly, and the merged export is the adapted policy."""

import json

import pytest
import torch
from safetensors import safe_open

from dartflow.config import ConfigError, load_config
from dartflow.tasks.training import checkpoints
from dartflow.tasks.training.checkpoints import load_policy
from dartflow.tasks.training.lora import AdapterFreeView, LoraSettings, adapter_folder, dropout_active, export_merged
from dartflow.tasks.training.settings import TrainerSettings
from dartflow.tasks.training.trainer import Trainer

from training_helpers import multi_turn_records, table

LORA = LoraSettings(enabled=True, rank=4, alpha=8.0)
SETTINGS = TrainerSettings(batch_size=4, micro_batch_size=2, lr=1e-2, advantage="grpo_no_std", lora=LORA)
INPUT_IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2]])


def signal_batch(seed: int = 0):
    """One group whose rewards differ (every step has a learning signal)."""
    records = multi_turn_records(groups=1, group_size=4, vocab_size=1024, seed=seed, turns=(1, 2))
    for record, reward in zip(records, (1.0, 0.0, 0.0, 1.0)):
        record.reward = reward
    return table(records)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits.float()


def base_weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if "lora_" not in n}


@pytest.fixture
def trainer(tiny_tied_model_dir, tmp_path):
    return Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path / "checkpoints", settings=SETTINGS)


def test_a_lora_step_trains_the_adapters_only(trainer):
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    adapters = {id(p) for n, p in trainer.policy.named_parameters() if "lora_" in n}
    assert optimized == adapters and len(adapters) == 2 * 7 * 2  # A and B x 7 projections x 2 layers
    base, before = base_weights(trainer), logits(trainer.policy)

    for seed in range(2):
        assert not trainer.train_step(signal_batch(seed)).skipped
    for name, tensor in base_weights(trainer).items():
        assert torch.equal(tensor, base[name]), name
    assert (logits(trainer.policy) - before).abs().max() > 1e-3  # the adapted policy moved
    assert not any(m.training for m in trainer.policy.modules())  # dropout off outside the step


def test_lora_dropout_acts_in_gradient_passes_only(tiny_tied_model_dir, tmp_path):
    settings = TrainerSettings(**{**SETTINGS.to_dict(), "lora": LoraSettings(enabled=True, rank=4, alpha=8.0, dropout=0.5)})
    trainer = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path, settings=settings)
    trainer.train_step(signal_batch())  # B != 0: dropout on A's input now changes the output
    assert torch.equal(logits(trainer.policy), logits(trainer.policy))
    with dropout_active(trainer.policy):
        assert not torch.equal(logits(trainer.policy), logits(trainer.policy))
    assert torch.equal(logits(trainer.policy), logits(trainer.policy))


def test_lora_behaviour_cloning_lowers_the_loss(trainer):
    batch = signal_batch()
    losses = [trainer.bc_step(batch).metrics["train/bc_loss"] for _ in range(4)]
    assert losses[-1] < losses[0] - 0.05


def test_the_kl_reference_is_the_base_with_adapters_off(tiny_tied_model_dir, tmp_path):
    settings = TrainerSettings(**{**SETTINGS.to_dict(), "kl_coef": 0.1})
    trainer = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path, settings=settings)
    assert isinstance(trainer.reference, AdapterFreeView)  # no second copy of the weights
    reports = [trainer.train_step(signal_batch(seed)) for seed in range(3)]
    assert reports[0].metrics["train/kl_ref"] == pytest.approx(0.0, abs=1e-9)
    assert reports[-1].metrics["train/kl_ref"] > 1e-5
    base = load_policy(tiny_tied_model_dir)
    assert torch.allclose(logits(trainer.reference), logits(base), atol=1e-6)
    assert (logits(trainer.policy) - logits(base)).abs().max() > 1e-3


def test_a_lora_checkpoint_holds_merged_untied_weights_that_are_the_adapted_policy(trainer, tiny_tied_model_dir, tmp_path):
    trainer.train_step(signal_batch())
    adapted = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    path = trainer.save_checkpoint()
    for name, parameter in trainer.policy.named_parameters():  # saving merged nothing in place
        assert torch.equal(parameter, adapted[name]), name

    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False
    with safe_open(path / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
    assert "lm_head.weight" in names and not any("lora" in n or "base_layer" in n for n in names)
    assert (adapter_folder(path) / "adapter_model.safetensors").is_file()
    assert not list(path.glob("adapter*"))  # out of the engine's `*.safetensors` glob
    saved = json.loads((path / checkpoints.STATE_DIR / checkpoints.TRAINER_JSON).read_text())
    assert saved["settings"]["lora"]["enabled"] and saved["adapter_base_dir"] == str(tiny_tied_model_dir.absolute())

    expected = logits(trainer.policy)
    assert torch.allclose(logits(load_policy(path)), expected, atol=1e-5)
    exported = export_merged(path, tmp_path / "export")
    assert json.loads((exported / "config.json").read_text())["tie_word_embeddings"] is True  # the base's own tie
    assert not (exported / checkpoints.STATE_DIR).exists() and (exported / "tokenizer.json").is_file()
    assert torch.allclose(logits(load_policy(exported)), expected, atol=1e-5)
    assert (expected - logits(load_policy(tiny_tied_model_dir))).abs().max() > 1e-3  # not the base


def test_a_resumed_lora_run_continues_exactly(tiny_tied_model_dir, tmp_path):
    data = [signal_batch(seed) for seed in range(4)]
    straight = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path / "straight", settings=SETTINGS)
    straight_reports = [straight.train_step(batch) for batch in data]

    first = Trainer(tiny_tied_model_dir, checkpoint_root=tmp_path / "resumed", settings=SETTINGS)
    for batch in data[:2]:
        first.train_step(batch)
    first.save_checkpoint()
    del first
    resumed = Trainer.resume(tmp_path / "resumed")
    assert resumed.settings.lora == LORA and resumed.version == 2
    resumed_reports = [resumed.train_step(batch) for batch in data[2:]]

    for (name, p), (other, q) in zip(straight.policy.named_parameters(), resumed.policy.named_parameters(), strict=True):
        assert name == other and torch.equal(p, q), name
    for a, b in zip(straight_reports[2:], resumed_reports):
        assert a.metrics["train/loss"] == b.metrics["train/loss"]


def test_resuming_a_lora_checkpoint_with_other_lora_settings_is_refused(trainer, tmp_path):
    trainer.save_checkpoint()
    with pytest.raises(ValueError, match="rank: checkpoint 4, config 8"):
        Trainer.resume(trainer.checkpoint_root, settings=TrainerSettings(lora=LoraSettings(enabled=True)))
    with pytest.raises(ValueError, match="enabled: checkpoint True, config False"):
        Trainer.resume(trainer.checkpoint_root, settings=TrainerSettings())


def test_target_modules_the_model_lacks_are_named(tiny_model_dir, tmp_path):
    settings = TrainerSettings(lora=LoraSettings(enabled=True, target_modules=("q_proj", "qkv_proj")))
    with pytest.raises(ValueError, match=r"\['qkv_proj'\] match no module.*q_proj"):
        Trainer(tiny_model_dir, checkpoint_root=tmp_path, settings=settings)


def test_the_lora_config_section_reaches_the_trainer_settings_and_refuses_bad_values():
    config = load_config(None, ["training.lora.enabled=true", "training.lora.rank=16", "training.lora.target_modules=[q_proj,v_proj]"])
    settings = TrainerSettings.from_config(config.training)
    assert settings.lora == LoraSettings(enabled=True, rank=16, target_modules=("q_proj", "v_proj"))
    assert TrainerSettings.from_config(load_config().training).lora.enabled is False  # full fine-tuning by default
    for override, field in [
        ("training.lora.rank=0", "training.lora.rank"),
        ("training.lora.dropout=1.0", "training.lora.dropout"),
        ("training.lora.target_modules=[]", "training.lora.target_modules"),
        ("training.lora.target_modules=[q_proj,q_proj]", "training.lora.target_modules"),
    ]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [override])


def test_dartflow_model_export_writes_a_full_fine_tuning_checkpoint_as_a_plain_folder(tiny_model_dir, tmp_path, capsys):
    from dartflow.flows.cli import main

    trainer = Trainer(tiny_model_dir, checkpoint_root=tmp_path / "checkpoints", settings=TrainerSettings(lr=1e-2))
    trainer.train_step(signal_batch())
    checkpoint = trainer.save_checkpoint()
    assert main(["model", "export", str(checkpoint), str(tmp_path / "export")]) == 0
    assert torch.equal(logits(load_policy(tmp_path / "export")), logits(trainer.policy))
    assert main(["model", "export", str(tmp_path / "nowhere"), str(tmp_path / "other")]) == 1
    assert "not a trainer checkpoint" in capsys.readouterr().err
