"""The learning-rate schedule and the trainer's settings (from TrainingConfig plus defaults)."""

import math

import pytest

from dartflow.config import TrainingConfig
from dartflow.tasks.training.schedule import learning_rate
from dartflow.tasks.training.settings import TrainerSettings


def test_warm_up_rises_linearly_then_constant_stays():
    lrs = [learning_rate(s, base_lr=1.0, warmup_steps=4, total_steps=10) for s in range(6)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_linear_and_cosine_decay_reach_the_floor_at_total_steps():
    common = {"base_lr": 2.0, "warmup_steps": 2, "total_steps": 12, "min_lr_ratio": 0.1}
    assert learning_rate(2, schedule="linear", **common) == pytest.approx(2.0)
    assert learning_rate(7, schedule="linear", **common) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert learning_rate(7, schedule="cosine", **common) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert learning_rate(12, schedule="cosine", **common) == pytest.approx(0.2)
    assert learning_rate(50, schedule="linear", **common) == pytest.approx(0.2)


def test_settings_take_every_training_config_field_and_default_the_rest():
    config = TrainingConfig(lr=3e-5, batch_size=8, micro_batch_size=2, advantage="rloo", checkpoint_keep=7)
    settings = TrainerSettings.from_config(config, warmup_steps=5)
    assert (settings.lr, settings.batch_size, settings.micro_batch_size) == (3e-5, 8, 2)
    assert settings.advantage == "rloo" and settings.checkpoint_keep == 7 and settings.warmup_steps == 5
    assert settings.proximal_logprobs == "reuse" and settings.lr_schedule == "constant"


def test_the_whole_run_config_is_refused_rather_than_silently_defaulted():
    from dartflow.config import RunConfig

    with pytest.raises(TypeError, match="config.training"):
        TrainerSettings.from_config(RunConfig())


@pytest.mark.parametrize("field, value", [("lr_schedule", "step"), ("proximal_logprobs", "old"), ("advantage", "ppo")])
def test_unknown_choices_name_the_field_and_the_allowed_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainerSettings(**{field: value})


def test_run_settings_score_at_the_rollout_temperature_unless_the_correction_is_off():
    from dartflow.config import validate_config

    config = validate_config({"rollout": {"temperature": 0.7}, "training": {"lr": 3e-5}})
    settings = TrainerSettings.from_run_config(config)
    assert (settings.temperature, settings.lr) == (0.7, 3e-5)
    assert TrainerSettings.from_run_config(config, warmup_steps=2).temperature == 0.7
    uncorrected = validate_config({"rollout": {"temperature": 0.7}, "training": {"temperature_correction": False}})
    assert TrainerSettings.from_run_config(uncorrected).temperature == 1.0
    with pytest.raises(TypeError, match="RunConfig"):
        TrainerSettings.from_run_config(config.training)
    with pytest.raises(ValueError, match="temperature"):
        TrainerSettings(temperature=0.0)
