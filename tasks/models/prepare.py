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

        # TinyModelConfig's fields are named like TinyModelSpec's.
        spec = TinyModelSpec(seed=model.seed, **model.tiny.model_dump())
        if spec.number_sense_steps:
            print(f"tiny policy: {spec.number_sense_steps} steps of number-sense pretraining", flush=True)

        def report(step: int, loss: float) -> None:
            if step % 250 == 0 or step == spec.number_sense_steps:
                print(f"number sense: step {step}/{spec.number_sense_steps}, loss {loss:.3f}", flush=True)

        return write_tiny_model(model_dir, spec, report=report), True
    from dartflow.tasks.models.smollm2 import convert_smollm2

    return convert_smollm2(model_dir, dtype=model.dtype), True
