"""The policy a run starts from: built or converted on first use, reused afterwards."""

from __future__ import annotations

from pathlib import Path

from dartflow.config import ModelConfig
from dartflow.tasks.models.folders import require_model_folder


def ensure_policy_model(model: ModelConfig, model_dir: Path) -> tuple[Path, bool]:
    """Return the policy folder for `model`, creating it when missing; and whether it was created.

    An existing folder is reused as is (a run must never silently replace its model): delete it,
    or point `model.path` elsewhere, to rebuild.
    """
    if (model_dir / "config.json").is_file() or model.source == "path":
        return require_model_folder(model_dir), False
    if model.source == "tiny":
        from dartflow.tasks.models.tiny import TinyModelSpec, write_tiny_model

        tiny = model.tiny
        spec = TinyModelSpec(
            seed=model.seed,
            vocab_size=tiny.vocab_size,
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            max_position_embeddings=tiny.max_position_embeddings,
            tie_word_embeddings=tiny.tie_word_embeddings,
        )
        return write_tiny_model(model_dir, spec), True
    from dartflow.tasks.models.smollm2 import convert_smollm2

    return convert_smollm2(model_dir, dtype=model.dtype), True
