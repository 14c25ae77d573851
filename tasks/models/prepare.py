"""The policy a run starts from: built or converted on first use, reused afterwards."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from dartflow.config import ModelConfig
from dartflow.tasks.models.folders import require_model_folder


def ensure_policy_model(model: ModelConfig, model_dir: Path) -> tuple[Path, bool]:
    """Return the policy folder for `model`, creating it when missing; and whether it was created.

    An existing folder is reused as is (a run must never silently replace its model): delete it,
    or point `model.path` elsewhere, to rebuild.
    """
    built = (model_dir / "config.json").is_file()
    if model.source == "tiny":
        from dartflow.tasks.models.tiny import TinyModelSpec, saved_spec, write_tiny_model

        # TinyModelConfig's fields are named like TinyModelSpec's.
        spec = TinyModelSpec(seed=model.seed, **model.tiny.model_dump())
        if built:
            check_same_spec(model_dir, spec, saved_spec(model_dir))
            return require_model_folder(model_dir), False
        if spec.number_sense_steps:
            print(f"tiny policy: {spec.number_sense_steps} steps of number-sense pretraining", flush=True)

        def report(step: int, loss: float) -> None:
            if step % 250 == 0 or step == spec.number_sense_steps:
                print(f"number sense: step {step}/{spec.number_sense_steps}, loss {loss:.3f}", flush=True)

        return write_tiny_model(model_dir, spec, report=report), True
    if built or model.source == "path":
        return require_model_folder(model_dir), False
    from dartflow.tasks.models.smollm2 import convert_smollm2

    return convert_smollm2(model_dir, dtype=model.dtype), True


def check_same_spec(model_dir: Path, wanted: Any, built: Any | None) -> None:
    """Refuse a reused tiny model folder built from other options than the config's (a changed
    `model.tiny` would otherwise be silently ignored). A folder without a saved spec is trusted."""
    if built is None or built == wanted:
        return
    differing = {
        name: (getattr(built, name), getattr(wanted, name))
        for name in (f.name for f in fields(wanted)) if getattr(built, name) != getattr(wanted, name)
    }
    listed = ", ".join(f"{name}: folder {old!r}, config {new!r}" for name, (old, new) in differing.items())
    raise ValueError(
        f"the tiny model in {model_dir} was built with other options than model.tiny/model.seed ({listed}); "
        f"delete that folder to rebuild it, or set model.path to another folder"
    )
