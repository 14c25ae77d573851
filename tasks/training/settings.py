"""What the trainer needs to know: the run's TrainingConfig plus the knobs it does not hold yet.

`TrainerSettings.from_config` reads every field by name from the config and falls back to the
defaults below for fields the config does not have, so adding a field of the same name to
`TrainingConfig` is all it takes to make it configurable. A run builds its trainer's settings with
`TrainerSettings.from_run_config`, which also reads what lives in other sections (the rollout's
sampling temperature).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dartflow.tasks.training.advantages import ADVANTAGE_ESTIMATORS, CREDIT_MODES
from dartflow.tasks.training.batching import BC_LOSSES, LOSS_AGGREGATIONS
from dartflow.tasks.training.lora import LoraSettings
from dartflow.tasks.training.schedule import LR_SCHEDULES

PROXIMAL_MODES = ("reuse", "recompute")


@dataclass(frozen=True)
class TrainerSettings:
    # In TrainingConfig (dartflow/config.py), same names and meanings.
    steps: int = 20
    batch_size: int = 16
    micro_batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    importance_weight_cap: float = 5.0
    advantage: str = "grpo"
    credit: str = "trajectory"  # see advantages.CREDIT_MODES
    discount: float = 1.0  # of later turns' rewards in a reward-to-go return
    loss_aggregation: str = "token_mean"  # see batching.LOSS_AGGREGATIONS
    updates_per_batch: int = 1  # optimizer updates on each batch (PPO epochs); the version moves by one per batch
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    checkpoint_keep: int = 3
    lora: LoraSettings = field(default_factory=LoraSettings)  # training.lora; disabled: full fine-tuning
    # Not in TrainingConfig yet.
    lr_schedule: str = "constant"  # see schedule.LR_SCHEDULES; decays over `steps` RL steps
    warmup_steps: int = 0  # linear warm-up of the RL learning rate
    min_lr_ratio: float = 0.0  # floor of the decayed LR, as a fraction of lr
    # "reuse": proximal log-probs = the step's own forward pass, detached. The step makes one
    # optimizer update per batch, so that pass runs on exactly the start-of-step weights and gives
    # the same values as a separate no-grad pass, for free. "recompute": that separate pass (one
    # more forward over the batch), for checking, or for a step that updates more than once.
    proximal_logprobs: str = "reuse"
    bc_lr: float | None = None  # constant LR of behaviour-cloning steps; None: lr
    bc_loss: str = "replies"  # see batching.BC_LOSSES
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    # The temperature T the trainer scores tokens with: log-probs and entropy of softmax(logits / T),
    # the distribution the engine sampled from (its behaviour log-probs are of it). From a run config:
    # rollout.temperature, or 1 when training.temperature_correction is off (`from_run_config`).
    temperature: float = 1.0

    def __post_init__(self) -> None:
        # A pydantic section (TrainingConfig.lora) or a dict (a checkpoint's trainer.json) works too.
        object.__setattr__(self, "lora", LoraSettings.coerce(self.lora))
        checks = {
            "advantage": (self.advantage, tuple(ADVANTAGE_ESTIMATORS)),
            "credit": (self.credit, CREDIT_MODES),
            "loss_aggregation": (self.loss_aggregation, LOSS_AGGREGATIONS),
            "lr_schedule": (self.lr_schedule, LR_SCHEDULES),
            "proximal_logprobs": (self.proximal_logprobs, PROXIMAL_MODES),
            "bc_loss": (self.bc_loss, BC_LOSSES),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if self.updates_per_batch < 1:
            raise ValueError(f"updates_per_batch must be >= 1, got {self.updates_per_batch}")
        if self.micro_batch_size < 1 or self.batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (the rollout's sampling temperature), got {self.temperature}")

    @classmethod
    def from_config(cls, config: Any | None = None, **overrides: Any) -> "TrainerSettings":
        """Settings from a TrainingConfig (any object with these attribute names), then overrides."""
        if config is not None and not all(hasattr(config, name) for name in ("lr", "clip_eps", "importance_weight_cap")):
            raise TypeError(
                f"expected the run's training section (a TrainingConfig, e.g. config.training), got {type(config).__name__}"
            )
        present = [f.name for f in fields(cls) if config is not None and hasattr(config, f.name)]
        values = {name: getattr(config, name) for name in present}
        values.update(overrides)
        if isinstance(values.get("adam_betas"), list):
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)

    @classmethod
    def from_run_config(cls, config: Any, **overrides: Any) -> "TrainerSettings":
        """Settings of a run's trainer from its RunConfig: the training section, scoring at the
        rollout's sampling temperature unless training.temperature_correction is off (then T = 1,
        the biased scoring, kept only to show the bias). Every place that builds or resumes a
        run's Trainer takes its settings from here, so the temperature cannot be forgotten."""
        if not all(hasattr(config, name) for name in ("training", "rollout")):
            raise TypeError(f"expected a RunConfig (with training and rollout sections), got {type(config).__name__}")
        corrected = getattr(config.training, "temperature_correction", True)
        temperature = config.rollout.temperature if corrected else 1.0
        return cls.from_config(config.training, **{"temperature": temperature, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
