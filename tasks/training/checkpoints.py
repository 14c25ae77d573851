"""Checkpoints: HF model folders the rollout engine loads, plus the state to resume training exactly.

    <checkpoint_root>/v000003/                      policy version 3
        config.json  model.safetensors  generation_config.json  tokenizer files
        trainer_state/trainer.json                 version, step counters, settings, base model
        trainer_state/state.pt                     AdamW state, torch RNG state
        trainer_state/adapter/                     LoRA runs: the peft adapter (lora.py)
        marked.json                                present: never pruned

Written atomically (built in a hidden sibling, renamed into place): a reader sees a whole
checkpoint or none. The trainer state lives in a subfolder, which vLLM's weight loader (a glob of
`*.safetensors` in the folder itself) does not look into.

The LM head is always written as its own tensor with `tie_word_embeddings: false`, even when the
trainer's model ties it to the input embedding: vLLM's CPU backend keeps a pre-packed copy of a
tied head that an in-place reload does not refresh (STACK.md). `trainer.json` remembers the tie, so
a resumed trainer ties the two again and trains exactly as before.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from dartflow.tasks.models.folders import atomic_model_folder, require_model_folder

CHECKPOINT_NAME = re.compile(r"^v(\d{6,})$")
STATE_DIR = "trainer_state"
TRAINER_JSON = "trainer.json"
STATE_PT = "state.pt"
ADAPTER_DIR = "adapter"  # LoRA runs: peft's adapter files, under STATE_DIR
MARKER = "marked.json"


def checkpoint_path(root: str | os.PathLike, version: int) -> Path:
    return Path(root) / f"v{version:06d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` as (version, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and (path / STATE_DIR / TRAINER_JSON).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def untied_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Every persistent tensor by its HF name, the LM head as a tensor of its own (a copy if tied)."""
    return untie_shared(model.state_dict())


def untie_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors, detached and contiguous, each with memory of its own (tied ones copied)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        # safetensors refuses tensors that share memory: a tied head gets its own copy.
        storage = tensor.untyped_storage().data_ptr()
        state[name] = tensor.clone().contiguous() if storage in seen else tensor.contiguous()
        seen.add(storage)
    return state


def write_model_files(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: Path,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """config.json (untied), model.safetensors, generation_config.json and the tokenizer into `folder`.

    weights: the tensors to write by HF name (e.g. LoRA-merged ones); None: the model's own.
    """
    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = False
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    state = untied_state_dict(model) if weights is None else untie_shared(weights)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def write_checkpoint(
    root: str | os.PathLike,
    version: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    *,
    trainer_state: dict[str, Any],
    tensor_state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
    adapter: Any | None = None,
) -> Path:
    """Write checkpoint `version` under `root` atomically (replacing one of that version); return it.

    trainer_state: JSON-able (version, counters, settings...); tensor_state: torch.save-able
    (optimizer state dict, RNG state). weights: see `write_model_files`. adapter: a peft model
    whose adapter files go to trainer_state/adapter/ (lora.py).
    """
    destination = checkpoint_path(root, version)
    with atomic_model_folder(destination, overwrite=True) as staging:
        write_model_files(model, tokenizer, staging, weights)
        (staging / STATE_DIR).mkdir()
        if adapter is not None:
            adapter.save_pretrained(staging / STATE_DIR / ADAPTER_DIR)
        torch.save(tensor_state, staging / STATE_DIR / STATE_PT)
        (staging / STATE_DIR / TRAINER_JSON).write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
    return destination


def read_trainer_state(checkpoint: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer.json, state.pt) of a checkpoint."""
    state_dir = Path(checkpoint) / STATE_DIR
    if not (state_dir / TRAINER_JSON).is_file():
        raise FileNotFoundError(f"{checkpoint} is not a trainer checkpoint (no {STATE_DIR}/{TRAINER_JSON})")
    trainer_state = json.loads((state_dir / TRAINER_JSON).read_text())
    tensor_state = torch.load(state_dir / STATE_PT, map_location="cpu", weights_only=True)
    return trainer_state, tensor_state


def load_policy(model_dir: str | os.PathLike, *, tie_word_embeddings: bool | None = None) -> PreTrainedModel:
    """The folder's causal LM in float32, eval mode (no dropout: log-probs must be deterministic).

    tie_word_embeddings: None keeps the folder's setting; True re-ties a checkpoint written untied.
    """
    path = require_model_folder(model_dir)
    overrides = {} if tie_word_embeddings is None else {"tie_word_embeddings": tie_word_embeddings}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **overrides).eval()


def is_tied(model: PreTrainedModel) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def mark_checkpoint(checkpoint: str | os.PathLike, reason: str = "") -> None:
    """Keep this checkpoint forever (pruning skips it)."""
    (Path(checkpoint) / MARKER).write_text(json.dumps({"reason": reason}))


def is_marked(checkpoint: str | os.PathLike) -> bool:
    return (Path(checkpoint) / MARKER).is_file()


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, marked ones excepted; return what was deleted.

    A checkpoint is renamed to a hidden name before deletion, so no reader ever opens a half-deleted
    folder under a version's name.
    """
    checkpoints = list_checkpoints(root)
    doomed = [path for _, path in checkpoints[: max(0, len(checkpoints) - keep)] if not is_marked(path)]
    for path in doomed:
        retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.deleting-", dir=path.parent))
        os.replace(path, retired / path.name)
        shutil.rmtree(retired, ignore_errors=True)
    return doomed


def remove_partial_folders(root: str | os.PathLike) -> list[Path]:
    """Remove staging/deletion leftovers of an interrupted writer (hidden `.vNNNNNN.*` folders)."""
    root = Path(root)
    if not root.is_dir():
        return []
    leftovers = [p for p in root.iterdir() if p.is_dir() and re.match(r"^\.v\d{6,}\.(partial|old|deleting)-", p.name)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers
