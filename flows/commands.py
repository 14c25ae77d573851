"""What each CLI command does: thin calls into tasks/ and storage/."""

from __future__ import annotations

import argparse
import sys

from dartflow.config import RunConfig, load_config


def load(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def model_tiny(args: argparse.Namespace) -> int:
    from dartflow.tasks.models.tiny import TinyModelSpec, write_tiny_model

    defaults = TinyModelSpec()
    spec = TinyModelSpec(
        seed=args.seed,
        vocab_size=args.vocab_size or defaults.vocab_size,
        hidden_size=args.hidden_size or defaults.hidden_size,
        num_layers=args.layers or defaults.num_layers,
        num_heads=args.heads or defaults.num_heads,
        tie_word_embeddings=args.tied,
    )
    print(f"building tiny Llama policy in {args.dir} (seed {spec.seed}, {'tied' if spec.tie_word_embeddings else 'untied'} embeddings)")
    path = write_tiny_model(args.dir, spec, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def model_smollm2(args: argparse.Namespace) -> int:
    from dartflow.tasks.models.smollm2 import convert_smollm2, find_smollm2_gguf

    gguf = args.gguf if args.gguf is not None else find_smollm2_gguf()
    print(f"converting {gguf} -> {args.dir} ({args.dtype}, {'tied' if args.tied else 'explicit lm_head'})")
    path = convert_smollm2(args.dir, dtype=args.dtype, gguf_path=gguf, untie_lm_head=not args.tied, overwrite=args.overwrite)
    print(f"wrote {path}")
    if args.no_check:
        return 0
    from dartflow.tasks.models.agreement import check_model_agreement

    print("checking greedy output in transformers and vLLM (starts a vLLM engine, ~30 s on CPU)")
    report = check_model_agreement(path)
    print(f"  transformers: {report.transformers_greedy_text!r}")
    print(f"  vLLM:         {report.vllm_greedy_text!r}")
    print(f"  max |log-prob difference| over {len(report.transformers_logprobs)} tokens: {report.max_abs_logprob_diff:.2e}")
    if not report.greedy_equal:
        print("dartflow: greedy outputs differ between transformers and vLLM", file=sys.stderr)
        return 1
    return 0
