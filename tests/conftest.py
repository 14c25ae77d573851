"""Shared fixtures: policy model folders, built once per test session.

Building a tiny model takes well under a second; SmolLM2 takes ~15 s (plus a ~93 MB download into
$DARTFLOW_CACHE or ~/.cache/dartflow the first time), so only tests that ask for it pay for it.
Tests must not write into these folders: copy one (shutil.copytree) to change it.
"""

from pathlib import Path

import pytest

from dartflow.tasks.models.smollm2 import convert_smollm2
from dartflow.tasks.models.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama policy with untied embeddings (explicit lm_head.weight), seed 0."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-untied", seed=0)


@pytest.fixture(scope="session")
def tiny_tied_model_dir(tmp_path_factory) -> Path:
    """The same tiny Llama policy shape with tied embeddings (no lm_head.weight on disk), seed 0."""
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-tied", seed=0, tie_word_embeddings=True
    )


@pytest.fixture(scope="session")
def smollm2_model_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted to float32 safetensors with an untied LM head."""
    return convert_smollm2(tmp_path_factory.mktemp("models") / "smollm2-f32", dtype="float32")
