"""Loading a new checkpoint into a running vLLM engine: checks in the trainer's process, the load in the worker's.

The engine reads the checkpoint folder itself (safetensors, the layout `save_pretrained` writes):
passing tensors through `collective_rpc` does not work on CPU (they arrive as lists), and a folder
on disk is what the trainer publishes anyway.

Tied embeddings: vLLM's CPU backend packs a private copy of the LM head at load time. An in-place
reload copies the new embedding into the shared parameter but does not re-pack a head that has no
weight of its own in the checkpoint, so a tied model keeps sampling from its old head, silently
(STACK.md). `WeightSyncExtension.dartflow_load_checkpoint` re-packs tied heads after every reload
and then checks every LM head against its weight, so a stale head is an error, never a wrong answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Fields that must agree between the engine's model and a checkpoint loaded into it in place:
# a different shape would fail half-way through the load, a different tie would load the LM head
# into the embedding (or leave it out).
SHAPE_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)
WORKER_EXTENSION = "dartflow.tasks.rollout.weight_sync.WeightSyncExtension"
# Relative gap allowed between an LM head's packed kernel and a plain matmul on its weight. Packed
# vs plain float32 agree to ~1e-6; a head left from other weights is off by O(1). (A head stale by
# one tiny optimizer step could hide under this: the re-pack above is the fix, this only a guard.)
LM_HEAD_CHECK_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 3e-2}


class CheckpointMismatch(ValueError):
    """A checkpoint that cannot be loaded into the running engine's model."""


def read_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The folder's config.json as a dict; raise CheckpointMismatch if it is not a model folder."""
    path = Path(model_dir)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointMismatch(f"checkpoint {path} has no config.json: not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")):
        raise CheckpointMismatch(f"checkpoint {path} holds no *.safetensors weights")
    return json.loads(config_file.read_text())


def is_tied(config: dict[str, Any]) -> bool:
    # transformers' default for a config that does not say is True.
    return bool(config.get("tie_word_embeddings", True))


def check_checkpoint_compatible(engine_config: dict[str, Any], checkpoint_config: dict[str, Any]) -> None:
    """Raise CheckpointMismatch naming every shape field in which the two configs differ."""
    engine_shape = shape_of(engine_config)
    checkpoint_shape = shape_of(checkpoint_config)
    differences = [
        f"{field}: engine {engine_shape[field]!r}, checkpoint {checkpoint_shape[field]!r}"
        for field in SHAPE_FIELDS
        if engine_shape[field] != checkpoint_shape[field]
    ]
    if differences:
        raise CheckpointMismatch(
            "checkpoint does not fit the running engine's model (an in-place reload needs the same "
            "architecture): " + "; ".join(differences)
        )


def shape_of(config: dict[str, Any]) -> dict[str, Any]:
    shape = {field: config.get(field) for field in SHAPE_FIELDS}
    shape["tie_word_embeddings"] = is_tied(config)
    # Configs written without it mean one KV head per attention head.
    if shape["num_key_value_heads"] is None:
        shape["num_key_value_heads"] = shape["num_attention_heads"]
    return shape


# ---- inside the vLLM worker process -------------------------------------------------------


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); called with `collective_rpc`.

    Method names carry a `dartflow_` prefix: vLLM refuses an extension whose names clash with
    the worker's own.
    """

    def dartflow_load_checkpoint(self, checkpoint_dir: str) -> dict[str, int]:
        """Reload all weights in place from `checkpoint_dir`, re-pack tied LM heads, check heads."""
        # vLLM's loader draws a "Loading safetensors checkpoint shards" bar per load unless its
        # load config says not to: one per swap would fill the run's log. Errors still raise.
        self.model_runner.vllm_config.load_config.use_tqdm_on_load = False
        self.reload_weights(weights_path=checkpoint_dir, is_checkpoint_format=True)
        model = self.model_runner.get_model()
        repacked = repack_tied_lm_heads(model)
        checked = check_lm_heads(model)
        return {"tied_heads_repacked": repacked, "heads_checked": checked}

    def dartflow_check_lm_heads(self) -> int:
        """Check every LM head against its weight (see `check_lm_heads`); return how many."""
        return check_lm_heads(self.model_runner.get_model())


def lm_heads(model) -> list:
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    return [module for module in model.modules() if isinstance(module, ParallelLMHead)]


def repack_tied_lm_heads(model) -> int:
    """Re-run weight processing on LM heads whose weight is an input embedding's; return how many.

    `process_weights_after_loading` is the hook vLLM itself runs after a load; for an LM head
    on CPU it re-packs the GEMM weight from the (already updated) shared parameter. On a GPU it
    does nothing, and nothing is needed there: the head reads the shared parameter directly.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    embedding_weights = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead)
    }
    repacked = 0
    for head in lm_heads(model):
        if id(head.weight) in embedding_weights:
            head.quant_method.process_weights_after_loading(head)
            repacked += 1
    return repacked


def check_lm_heads(model) -> int:
    """Raise RuntimeError if an LM head computes something else than `x @ weight.T`; return count.

    This is the check that turns a stale packed head (of any origin, in any future vLLM) into an
    error: two random rows through the head's own kernel vs a plain matmul on its weight.
    """
    import torch

    checked = 0
    for head in lm_heads(model):
        weight = head.weight
        if weight.numel() == 0 or weight.dim() != 2:
            continue  # a quantized or removed weight has no plain form to compare against
        with torch.no_grad():
            generator = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(2, weight.shape[1], generator=generator).to(weight.device, weight.dtype)
            packed = head.quant_method.apply(head, x).float()
            plain = torch.nn.functional.linear(x, weight).float()
        gap = (packed - plain).abs().max().item()
        tolerance = LM_HEAD_CHECK_TOLERANCE.get(str(weight.dtype).removeprefix("torch."), 3e-2)
        if not gap <= tolerance * max(1.0, plain.abs().max().item()):
            raise RuntimeError(
                f"LM head disagrees with its weight after a reload (max gap {gap:.3g}): the engine "
                "would sample from stale weights. Restart the engine, or load untied checkpoints."
            )
        checked += 1
    return checked
