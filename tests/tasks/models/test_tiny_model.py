import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from dartflow.tasks.models import tiny
from dartflow.tasks.models.tiny import (
    IM_END,
    IM_START,
    PAD_TOKEN,
    TinyModelSpec,
    build_tiny_model,
    count_parameters,
    init_tiny_llama,
    train_tokenizer,
)


def read_files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def safetensors_keys(folder):
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return set(weights.keys())


def test_building_twice_gives_byte_identical_folders(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert read_files(again) == read_files(tiny_model_dir)
    assert {"model.safetensors", "tokenizer.json", "config.json", "generation_config.json"} <= set(
        read_files(again)
    )


def test_another_seed_changes_the_weights_but_not_the_tokenizer(tiny_model_dir, tmp_path):
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()


def test_building_leaves_the_global_torch_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    init_tiny_llama(TinyModelSpec(seed=7), train_tokenizer(1024))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("tied", [False, True])
def test_default_model_has_a_few_hundred_thousand_parameters(tied):
    model = init_tiny_llama(TinyModelSpec(tie_word_embeddings=tied), train_tokenizer(1024))
    embedding = 1024 * 128
    assert 200_000 <= count_parameters(model) <= 5_000_000
    # 2 layers x (4 attention projections of 128x128 + 3 MLP projections of 128x256 + 2 norms)
    layers = 2 * (4 * 128 * 128 + 3 * 128 * 256 + 2 * 128)
    assert count_parameters(model) == layers + 128 + embedding * (1 if tied else 2)


def test_untied_folder_holds_an_explicit_lm_head(tiny_model_dir):
    assert "lm_head.weight" in safetensors_keys(tiny_model_dir)
    assert json.loads((tiny_model_dir / "config.json").read_text())["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_tied_folder_shares_the_embedding_as_lm_head(tiny_tied_model_dir):
    assert "lm_head.weight" not in safetensors_keys(tiny_tied_model_dir)
    assert json.loads((tiny_tied_model_dir / "config.json").read_text())["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(tiny_tied_model_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_config_names_the_chat_special_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == len(tokenizer) == 1024
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == [PAD_TOKEN, IM_START, IM_END]
    assert config["eos_token_id"] == generation["eos_token_id"] == tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 0


@pytest.mark.parametrize(
    "text",
    [
        "Guess a number between 1 and 100.",
        "(12 + 7) * 3 = ?\n57",
        "  leading and trailing spaces  \n\n\ttabs",
        "<|im_start|>user\nhigher<|im_end|>\n<|im_start|>assistant\n73<|im_end|>",
        "0123456789 -42 3.14 1e9",
        "unseen bytes: héllo, 数字, 🙂",
    ],
)
def test_tokenizer_round_trips_text_exactly(tiny_model_dir, text):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids


def test_chat_markers_are_single_special_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_frequent_environment_words_are_single_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for word in ("higher", "lower", "assistant", "user", "system", " number"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word


def test_chat_template_renders_chatml(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "You are playing a number guessing game."},
        {"role": "user", "content": "Guess a number between 1 and 100."},
        {"role": "assistant", "content": "50"},
        {"role": "user", "content": "higher"},
    ]
    expected = (
        "<|im_start|>system\nYou are playing a number guessing game.<|im_end|>\n"
        "<|im_start|>user\nGuess a number between 1 and 100.<|im_end|>\n"
        "<|im_start|>assistant\n50<|im_end|>\n"
        "<|im_start|>user\nhigher<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    with_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == expected + "<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer.encode(with_prompt, add_special_tokens=False)


def test_refuses_to_overwrite_a_non_empty_folder(tiny_model_dir, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists and is not empty.*overwrite=True"):
        build_tiny_model(target)
    assert read_files(target) == {"notes.txt": b"keep me"}

    build_tiny_model(target, overwrite=True)
    assert read_files(target) == read_files(tiny_model_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging or retired leftovers


def test_builds_into_an_existing_empty_folder(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert read_files(build_tiny_model(tmp_path / "empty")) == read_files(tiny_model_dir)


def test_a_failed_build_leaves_no_folder_behind(tmp_path, monkeypatch):
    def save_half_then_fail(model, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tiny.LlamaForCausalLM, "save_pretrained", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_tiny_model(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"vocab_size": 100}, "vocab_size"),
        ({"vocab_size": 100_000}, "vocab_size"),
        ({"hidden_size": 130}, "divisible by num_heads"),
        ({"hidden_size": 96, "num_heads": 4}, "head size"),
        ({"num_layers": 0}, "num_layers"),
        ({"max_position_embeddings": 8}, "max_position_embeddings"),
    ],
)
def test_spec_rejects_bad_options_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        TinyModelSpec(**options)


def test_larger_vocab_and_depth_build(tmp_path):
    folder = build_tiny_model(tmp_path / "big", vocab_size=2048, num_layers=4, hidden_size=256, num_heads=4)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert len(AutoTokenizer.from_pretrained(folder)) == model.config.vocab_size == 2048
    assert model.config.num_hidden_layers == 4 and model.config.head_dim == 64


def test_a_reused_tiny_folder_must_match_the_configs_options(tmp_path):
    from dartflow.config import ModelConfig
    from dartflow.tasks.models.prepare import ensure_policy_model
    from dartflow.tasks.models.tiny import SPEC_FILE, saved_spec

    folder = tmp_path / "tiny"
    path, created = ensure_policy_model(ModelConfig(), folder)
    assert created and saved_spec(path) == TinyModelSpec()
    assert ensure_policy_model(ModelConfig(), folder) == (path, False)  # same options: reused
    changed = ModelConfig(tiny={"number_sense_steps": 100})
    with pytest.raises(ValueError, match=r"number_sense_steps: folder 0, config 100.*delete that folder"):
        ensure_policy_model(changed, folder)
    (path / SPEC_FILE).unlink()  # a folder built before specs were saved is trusted
    assert ensure_policy_model(changed, folder) == (path, False)
