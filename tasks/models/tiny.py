"""A tiny Llama policy with its own byte-level BPE tokenizer, made locally from a seed.

No hub is reachable, so tests and quick runs use a model created here: a few hundred thousand
parameters, a tokenizer trained on text shaped like the built-in environments (corpus.py), ChatML
special tokens and chat template. The folder it writes loads in transformers and in vLLM.
Building twice with the same options gives byte-identical files.
"""

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dartflow.tasks.models.corpus import build_corpus
from dartflow.tasks.models.folders import atomic_model_folder
from dartflow.tasks.models.limits import MAX_VOCAB_SIZE, VLLM_CPU_HEAD_SIZES
from dartflow.tasks.models.number_sense import pretrain_number_sense

# Same ids as SmolLM2's: 0 ends a document (used as padding), 1 and 2 open and close a chat turn.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

SPEC_FILE = "dartflow_tiny_spec.json"  # the TinyModelSpec a folder was built from

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)



@dataclass(frozen=True)
class TinyModelSpec:
    """Options of a tiny Llama policy; invalid combinations raise ValueError on creation."""

    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Steps of number-sense pretraining (number_sense.py) over integers in [0, number_sense_high]:
    # 0 keeps the random initialisation.
    number_sense_steps: int = 0
    number_sense_high: int = 100

    def __post_init__(self) -> None:
        lowest_vocab = 256 + len(SPECIAL_TOKENS) + 1  # every byte, the markers, one merge
        if not lowest_vocab <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be in [{lowest_vocab}, {MAX_VOCAB_SIZE}] (the byte alphabet "
                f"plus merges the corpus can supply), got {self.vocab_size}"
            )
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.hidden_size // self.num_heads not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(
                f"head size hidden_size/num_heads = {self.hidden_size // self.num_heads} is not "
                f"one vLLM's CPU attention supports: {VLLM_CPU_HEAD_SIZES}"
            )
        if self.max_position_embeddings < 16:
            raise ValueError(
                f"max_position_embeddings must be at least 16, got {self.max_position_embeddings}"
            )
        if self.number_sense_steps < 0 or self.number_sense_high < 8:
            raise ValueError(
                f"number_sense_steps must be >= 0 and number_sense_high >= 8, got "
                f"{self.number_sense_steps}, {self.number_sense_high}"
            )
        if not self.initializer_range > 0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a tiny Llama policy + tokenizer as a Hugging Face folder at `out_dir`; return it.

    Untied embeddings (the default) write an explicit `lm_head.weight`, which vLLM's CPU engine
    needs to live-reload weights correctly (see STACK.md). Refuses a non-empty `out_dir` unless
    `overwrite=True`.
    """
    spec = TinyModelSpec(
        seed=seed,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
    return write_tiny_model(out_dir, spec, overwrite=overwrite)


def write_tiny_model(
    out_dir: str | os.PathLike, spec: TinyModelSpec, *, overwrite: bool = False,
    report: Callable[[int, float], None] | None = None,
) -> Path:
    """Write the model `spec` describes to `out_dir` atomically; return the folder's path.

    With `spec.number_sense_steps` the model is pretrained on number facts first (`report(step,
    loss)` shows progress); the same spec and thread count give the same weights.
    """
    tokenizer = train_tokenizer(spec.vocab_size)
    model = init_tiny_llama(spec, tokenizer)
    if spec.number_sense_steps:
        pretrain_number_sense(
            model, tokenizer, steps=spec.number_sense_steps, seed=spec.seed, high=spec.number_sense_high, report=report,
        )
    with atomic_model_folder(out_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (Path(staging) / SPEC_FILE).write_text(json.dumps(asdict(spec), sort_keys=True, indent=1) + "\n")
    return Path(out_dir)


def saved_spec(model_dir: str | os.PathLike) -> TinyModelSpec | None:
    """The spec a tiny model folder was built from (None for a folder without one)."""
    path = Path(model_dir) / SPEC_FILE
    return TinyModelSpec(**json.loads(path.read_text())) if path.is_file() else None


def train_tokenizer(vocab_size: int, *, corpus_seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with exactly `vocab_size` tokens, trained on the corpus.

    Byte-level with the whole byte alphabet: any text round-trips exactly, nothing is unknown.
    The model seed does not enter: tiny models of one vocab_size share a tokenizer, so their
    token ids can be compared.
    """
    bpe = Tokenizer(models.BPE())
    # No prefix space: decode(encode(text)) must give back `text` byte for byte.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(build_corpus(corpus_seed), trainer)
    if bpe.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the corpus only supports {bpe.get_vocab_size()} tokens, fewer than vocab_size={vocab_size}"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,  # a chat policy's turn ends at <|im_end|>
        pad_token=PAD_TOKEN,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def init_tiny_llama(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised float32 Llama for `spec`, its special ids taken from `tokenizer`."""
    special_ids = {
        "pad_token_id": tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        "bos_token_id": tokenizer.convert_tokens_to_ids(IM_START),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
    }
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
        dtype="float32",
        **special_ids,
    )
    # A private RNG stream: the caller's global torch seed neither changes nor matters.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special_ids)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied LM head counts once)."""
    return sum(parameter.numel() for parameter in model.parameters())
