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
        number_sense_steps=args.number_sense_steps,
    )
    print(f"building tiny Llama policy in {args.dir} (seed {spec.seed}, {'tied' if spec.tie_word_embeddings else 'untied'} embeddings)")
    path = write_tiny_model(
        args.dir, spec, overwrite=args.overwrite,
        report=lambda step, loss: print(f"number sense: step {step}/{spec.number_sense_steps}, loss {loss:.3f}"),
    )
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


def model_export(args: argparse.Namespace) -> int:
    from dartflow.tasks.training.lora import export_merged

    path = export_merged(args.checkpoint, args.dir, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def quickstart(config: RunConfig) -> int:
    """The README's main job: `train` in async mode under a run name not used yet in the work dir."""
    from dartflow.flows.train import run_train

    name = unused_run_name(config.work_dir / "runs", config.run_name)
    if name != config.run_name:
        print(f"run '{config.run_name}' exists in {config.work_dir / 'runs'}: this run is '{name}'")
        config = config.model_copy(update={"run_name": name})
    summary = run_train(config, mode="async")
    print(
        f"held-out success: {summary['heldout_before']:.3f} after the warm-up -> {summary['heldout_after']:.3f} "
        f"at version {summary['final_version']} (run '{name}')"
    )
    print(f"look at it: MLflow run {summary.get('mlflow_run_id', '?')} in {config.mlflow_uri}; dartflow store stats CONFIG")
    return 0


def unused_run_name(runs_dir, name: str) -> str:
    """`name` if no run of that name exists under `runs_dir`, else the first free `name-2`, `name-3`, ..."""
    from pathlib import Path

    runs_dir = Path(runs_dir)
    candidate, number = name, 1
    while (runs_dir / candidate).exists():
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def store_demo(config: RunConfig) -> int:
    from dartflow.flows.store_demo import run_store_demo
    from dartflow.tasks.models.prepare import ensure_policy_model

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    config.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"policy model: {config.model.source} -> {config.model_dir}")
    model_dir, created = ensure_policy_model(config.model, config.model_dir)
    print(f"  {'built' if created else 'reusing'} {model_dir}")
    summary = run_store_demo(config, model_dir)
    print(
        f"inspect it: dartflow store stats CONFIG; dartflow store lineage --version 0 --run {summary['run_id']} CONFIG"
    )
    return 0


def _open_existing_store(config: RunConfig, run_id: str | None = None):
    from pathlib import Path

    from dartflow.storage import TrajectoryStore

    if "://" not in config.store_uri and not Path(config.store_uri).exists():
        raise FileNotFoundError(f"no trajectory store at {config.store_uri} (has this run written anything yet?)")
    return TrajectoryStore(config.store_uri, run_id=run_id, compact_every_appends=0)  # read-only use


def store_stats(config: RunConfig) -> int:
    store = _open_existing_store(config)
    stats = store.problem_stats()
    print(f"{store.count()} trajectories in {config.store_uri} (table version {store.version})")
    with _wide_polars():
        print(stats.drop("last_seen_at").sort("attempts", descending=True))
    return 0


def store_lineage(config: RunConfig, policy_version: int, run_id: str | None) -> int:
    store = _open_existing_store(config, run_id)
    lineage = store.lineage(policy_version)
    if lineage.num_rows == 0:
        print(f"dartflow: no training batch recorded for trainer version {policy_version}", file=sys.stderr)
        return 1
    runs = sorted(set(lineage["run_id"].to_pylist()), key=str)
    if len(runs) > 1:
        print(f"dartflow: several runs trained a version {policy_version}; pick one with --run: {runs}", file=sys.stderr)
        return 2
    rows = store.replay(policy_version, columns=["run_id", "problem_id", "reward", "min_policy_version", "finish_reason"])
    import polars as pl

    print(
        f"run {runs[0]}: the optimizer step at trainer version {policy_version} (producing version "
        f"{policy_version + 1}) consumed {rows.num_rows} trajectories:"
    )
    with _wide_polars():
        print(pl.from_arrow(rows))
    return 0


def _wide_polars():
    import polars as pl

    return pl.Config(tbl_rows=50, tbl_cols=12, tbl_width_chars=140, fmt_str_lengths=40)
