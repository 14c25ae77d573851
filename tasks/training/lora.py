"""LoRA adapters (peft) on the trainer's policy; the engine still gets full merged weights.

With `training.lora.enabled` the trainer wraps its policy with `peft`: the base weights are frozen,
AdamW sees only the adapters' A and B matrices. The rollout engine knows nothing about adapters:
every checkpoint the trainer writes keeps the layout of a full fine-tuning one (a HF safetensors
folder with an explicit, untied `lm_head.weight`), holding W + (alpha / rank) B A for every adapted
projection. The merge is computed into new tensors (`merged_state_dict`); the training model is
never merged in place (peft's merge/unmerge round trip would not give the base weights back
bit for bit).

    <checkpoint>/model.safetensors ...          merged weights, what the engine loads
    <checkpoint>/trainer_state/adapter/         peft's adapter_config.json + adapter_model.safetensors
    <checkpoint>/trainer_state/trainer.json     "adapter_base_dir": the folder the adapters sit on

`Trainer.resume` rebuilds base (from `adapter_base_dir`) + adapter (from the checkpoint) and the
optimizer state of the adapters; `export_merged` writes any checkpoint as a plain HF folder
(`dartflow model export`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from dartflow.config import LLAMA_TARGET_MODULES
from dartflow.tasks.training import checkpoints

ADAPTER_NAME = "default"
ADAPTER_INIT_SEED = 0
# Must agree between a checkpoint and the settings that resume it (dropout may change).
STRUCTURE_FIELDS = ("enabled", "rank", "alpha", "target_modules")


@dataclass(frozen=True)
class LoraSettings:
    """training.lora (dartflow/config.py LoraConfig), same names and meanings."""

    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_TARGET_MODULES

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")

    @classmethod
    def coerce(cls, value: Any) -> "LoraSettings":
        """From LoraSettings, a dict (trainer.json), a pydantic LoraConfig or None (the default)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise TypeError(f"lora settings must be a mapping, got {type(value).__name__}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}


def is_adapted(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def with_adapters(model: PreTrainedModel, settings: LoraSettings, adapter_dir: str | os.PathLike | None = None):
    """`model` wrapped by peft: fresh adapters (B = 0: the policy is unchanged), or trainable ones
    read from `adapter_dir`. Base weights frozen; eval mode (see `dropout_active`)."""
    import peft

    missing = [name for name in settings.target_modules if not _has_module(model, name)]
    if missing:
        found = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora.target_modules {missing} match no module of the model; its linear layers: {found}")
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    if adapter_dir is not None:
        policy = peft.PeftModel.from_pretrained(model, str(adapter_dir), config=config, is_trainable=True)
    else:
        # A's random init from its own seed: two trainers on the same folder start alike, and the
        # run's RNG stream is the same with and without LoRA.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ADAPTER_INIT_SEED)
            policy = peft.get_peft_model(model, config)
    return policy.eval()


def _has_module(model: torch.nn.Module, suffix: str) -> bool:
    return any(name == suffix or name.endswith("." + suffix) for name, _ in model.named_modules())


def base_model(policy: torch.nn.Module) -> PreTrainedModel:
    """The HF model inside a peft wrapper (adapter layers in place), or `policy` itself."""
    return policy.get_base_model() if is_adapted(policy) else policy


@torch.no_grad()
def merged_state_dict(policy: torch.nn.Module) -> dict[str, Tensor]:
    """The base model's state dict by HF names with every adapted weight replaced by a new tensor
    W + scaling * B A (peft's `get_delta_weight`, what its own merge adds); the training model is
    left untouched. Tied tensors keep sharing memory (`checkpoints.untie_shared` splits them)."""
    from peft.tuners.lora import LoraLayer

    model = base_model(policy)
    state = {
        key.replace(".base_layer.", "."): tensor
        for key, tensor in model.state_dict().items()
        if ".lora_" not in key
    }
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            key = f"{name}.weight"
            delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
            state[key] = state[key] + delta.to(state[key].dtype)
    return state


def checkpoint_parts(policy: torch.nn.Module) -> tuple[PreTrainedModel, dict[str, Tensor] | None, Any]:
    """(HF model for config and architecture, its weights to write or None for its own, the peft
    model whose adapter is saved or None) of the trainer's policy."""
    if not is_adapted(policy):
        return policy, None, None
    return base_model(policy), merged_state_dict(policy), policy


class AdapterFreeView:
    """The policy with its adapters switched off, i.e. the frozen base: the KL reference without a
    second copy of the weights. Quacks like the model for `logprobs.agent_token_logprobs`."""

    def __init__(self, policy: torch.nn.Module) -> None:
        self._policy = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._policy.disable_adapter():
            return self._policy(*args, **kwargs)

    def get_decoder(self) -> "AdapterFreeView":
        return _WithoutAdapters(self._policy, self._policy.get_decoder())

    def get_output_embeddings(self) -> "AdapterFreeView":
        return _WithoutAdapters(self._policy, self._policy.get_output_embeddings())


class _WithoutAdapters:
    def __init__(self, policy: torch.nn.Module, module: torch.nn.Module) -> None:
        self._policy, self._module = policy, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._policy.disable_adapter():
            return self._module(*args, **kwargs)


@contextlib.contextmanager
def dropout_active(policy: torch.nn.Module) -> Iterator[None]:
    """LoRA dropout on for the gradient passes of a step, off again after. The policy otherwise
    stays in eval mode: the engine samples without dropout, so proximal, reference and selection
    passes (no grad) must not use it. Nothing happens without adapters or with dropout 0."""
    modules = [m for name, m in policy.named_modules() if name.endswith("lora_dropout")] if is_adapted(policy) else []
    for module in modules:
        module.train()
    try:
        yield
    finally:
        for module in modules:
            module.eval()


def adapter_folder(checkpoint: str | os.PathLike) -> Path:
    """Where a LoRA checkpoint keeps peft's adapter files."""
    return Path(checkpoint) / checkpoints.STATE_DIR / checkpoints.ADAPTER_DIR


def check_resumable(saved: LoraSettings, settings: LoraSettings) -> None:
    """Raise ValueError when `settings` cannot continue a checkpoint trained with `saved`."""
    differ = [f"{f}: checkpoint {getattr(saved, f)!r}, config {getattr(settings, f)!r}"
              for f in STRUCTURE_FIELDS if getattr(saved, f) != getattr(settings, f)]
    if differ:
        raise ValueError("training.lora does not match the checkpoint being resumed: " + "; ".join(differ))


def export_merged(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write trainer checkpoint `checkpoint` as a plain HF folder (merged weights, tokenizer, the
    base model's own embedding tie; no trainer state) at `out_dir`; return it.

    A LoRA checkpoint is rebuilt from its base folder + adapter and merged by peft
    (`merge_and_unload`); a full fine-tuning checkpoint is its own weights.
    """
    from transformers import AutoTokenizer

    from dartflow.tasks.models.folders import atomic_model_folder

    checkpoint = Path(checkpoint)
    saved, _ = checkpoints.read_trainer_state(checkpoint)
    settings = LoraSettings.coerce(saved["settings"].get("lora"))
    if settings.enabled:
        base_dir = Path(saved["adapter_base_dir"])
        if not (base_dir / "config.json").is_file():
            raise FileNotFoundError(f"the base model of LoRA checkpoint {checkpoint} is gone: {base_dir}")
        adapted = with_adapters(checkpoints.load_policy(base_dir), settings, adapter_folder(checkpoint))
        model = adapted.merge_and_unload()
    else:
        model = checkpoints.load_policy(checkpoint, tie_word_embeddings=saved["tie_word_embeddings"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with atomic_model_folder(out_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(out_dir).absolute()
