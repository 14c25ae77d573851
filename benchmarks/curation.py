"""Curation off vs on: held-out success per difficulty level, and how many trained groups carried signal.

The same config runs through `dartflow train` twice from the same warm start (one BC run
beforehand), once with every curation rule off (the uniform baseline) and once with the rules of
`CURATION_ON`, for the same number of optimizer steps of the same batch size. The problem mix has a
hard tail: `guess_number` with three levels (range 4 / 3 turns, range 16 / 5 turns, range 64 / 7
turns), every held-out problem of every level evaluated at the start and at the end.

Measured, per run, from the stores the runs leave (LanceDB rows, lineage, MLflow):
- held-out success per level before and after (final evaluation rows, level from the problem ids);
- generated tokens (sum of `num_response_tokens` of every train rollout written): the compute spent;
- useful groups: the share of trained groups whose rewards differ (a group of equal rewards has zero
  group-relative advantage for every member and teaches nothing), over every trained batch.

    .venv/bin/python benchmarks/curation.py              # ~15 min on 2 cores; rewrites reports/curation.md
    .venv/bin/python benchmarks/curation.py --quick      # smoke run; report under benchmarks/out/
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

LEVELS = [{"range_size": 4, "max_turns": 3}, {"range_size": 16, "max_turns": 5}, {"range_size": 64, "max_turns": 7}]
CURATION_ON = {
    "rollout_budget": {"enabled": True, "min_group_size": 2, "max_group_size": 8, "rollouts_per_round": 32},
    "turn_limit": {"enabled": True, "min_turns": 2},
    "experience_pool": {"enabled": True, "capacity_per_problem": 4},
    "dynamic_sampling": {"enabled": True},
}
MODES = ("off", "on")


def _avs():
    """benchmarks/async_vs_sync.py, for its process runner (one way to run and log `dartflow train`)."""
    spec = importlib.util.spec_from_file_location("async_vs_sync", HERE / "async_vs_sync.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---- configs (pure) ------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": "guess_number", "params": {"levels": LEVELS, "heldout_fraction": args.heldout_fraction}}


def heldout_count(env: dict[str, Any]) -> int:
    from dartflow.tasks.envs.registry import make_problem_source

    return make_problem_source(env["name"], env["params"]).size("heldout")


def run_config(base: dict[str, Any], args: argparse.Namespace, root: Path, mode: str, start_from: Path | None) -> dict[str, Any]:
    """One run's config: the modes differ only in run_name, work_dir, model_name and the curation section."""
    config = copy.deepcopy(base)
    env = environment(args)
    run_name = f"curation-{mode}"
    config.update(run_name=run_name, work_dir=str(root / run_name), environments=[env])
    if start_from is not None:
        config["model"] = {**config.get("model", {}), "source": "path", "path": str(start_from)}
    config["rollout"] = {**config.get("rollout", {}), "max_turns": max(level["max_turns"] for level in LEVELS)}
    config["training"] = {**config.get("training", {}), "steps": args.steps, "bc_steps": 0}
    config["evaluation"] = {**config.get("evaluation", {}), "every_versions": 0, "heldout_problems": heldout_count(env),
                            "samples_per_problem": args.samples_per_problem}
    config["tracking"] = {**config.get("tracking", {}), "experiment": "curation-benchmark", "model_name": f"{run_name}-policy"}
    if mode == "on":
        config["curation"] = copy.deepcopy(CURATION_ON)
    else:
        config.pop("curation", None)
    return config


def bc_run_config(base: dict[str, Any], args: argparse.Namespace, root: Path) -> dict[str, Any]:
    config = run_config(base, args, root, "bc", None)
    config["training"].update(steps=0, bc_steps=args.bc_steps)
    config["evaluation"].update(heldout_problems=1, samples_per_problem=1)
    return config


# ---- measurements from the stores (pure over rows) ------------------------------------------------


def level_of(problem_ids: list[str], env: dict[str, Any]) -> dict[str, int]:
    """problem id -> level index, from the problem source that made the ids."""
    from dartflow.tasks.envs.registry import make_problem_source

    source = make_problem_source(env["name"], env["params"])
    levels = {}
    for problem_id in set(problem_ids):
        split, index = problem_id.split("/")[-2:]
        levels[problem_id] = int(source.problem(split, int(index)).difficulty)
    return levels


def success_by_level(rows: list[dict[str, Any]], levels: dict[str, int]) -> dict[int, tuple[int, int]]:
    """level -> (successes, episodes) over `rows` (problem_id, success)."""
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        level = levels[row["problem_id"]]
        counts[level][0] += int(row["success"])
        counts[level][1] += 1
    return {level: (s, n) for level, (s, n) in sorted(counts.items())}


def useful_group_share(batches: list[list[dict[str, Any]]]) -> tuple[int, int]:
    """(groups whose rewards differ, groups) over trained batches of rows (group_id, reward)."""
    useful = total = 0
    for batch in batches:
        rewards: dict[str, list[float]] = defaultdict(list)
        for row in batch:
            rewards[row["group_id"]].append(row["reward"])
        total += len(rewards)
        useful += sum(1 for values in rewards.values() if max(values) > min(values))
    return useful, total


def read_run(config: dict[str, Any]) -> dict[str, Any]:
    """Everything the report needs from one finished run's store."""
    from dartflow.storage import TrajectoryStore

    store = TrajectoryStore(str(Path(config["work_dir"]) / "lancedb"), run_id=config["run_name"])
    env = config["environments"][0]
    train = store.as_of(store.version, where=f"run_id = '{config['run_name']}' AND split = 'train' AND source = 'rollout'",
                        columns=["num_response_tokens"])
    heldout = store.as_of(store.version, where=f"run_id = '{config['run_name']}' AND split = 'heldout'",
                          columns=["problem_id", "success", "metadata_json"]).to_pylist()
    by_version: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in heldout:
        by_version[json.loads(row["metadata_json"])["evaluation_version"]].append(row)
    first, last = min(by_version), max(by_version)
    levels = level_of([row["problem_id"] for row in heldout], env)
    batches, version = [], 0
    while store.lineage(version).num_rows:
        batches.append(store.replay(version, columns=["group_id", "reward"]).to_pylist())
        version += 1
    useful, groups = useful_group_share(batches)
    return {
        "tokens": int(sum(train["num_response_tokens"].to_pylist())),
        "rollouts": train.num_rows,
        "steps": len(batches),
        "before": success_by_level(by_version[first], levels),
        "after": success_by_level(by_version[last], levels),
        "useful_groups": useful,
        "trained_groups": groups,
    }


# ---- report --------------------------------------------------------------------------------------


def rate(pair: tuple[int, int]) -> str:
    successes, episodes = pair
    return f"{successes / episodes:.3f} ({successes}/{episodes})" if episodes else "-"


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], command: str) -> str:
    off, on = results["off"], results["on"]
    share = {mode: r["useful_groups"] / r["trained_groups"] if r["trained_groups"] else 0.0 for mode, r in results.items()}
    ratio = share["on"] / share["off"] if share["off"] else float("inf")
    lines = [
        "# Curation off vs on",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}`.",
        f"guess_number levels {[(l['range_size'], l['max_turns']) for l in LEVELS]} (range, turns); "
        f"{args.steps} optimizer steps per run from the same BC warm start ({args.bc_steps} steps); "
        f"curation on = `{json.dumps(CURATION_ON)}`.",
        "",
        f"**useful groups on / off = {ratio:.2f}x** ({share['on']:.2f} vs {share['off']:.2f} of trained groups have differing rewards)",
        "",
        "| | off | on |",
        "|---|---|---|",
        f"| optimizer steps | {off['steps']} | {on['steps']} |",
        f"| train rollouts written | {off['rollouts']} | {on['rollouts']} |",
        f"| generated tokens | {off['tokens']} | {on['tokens']} |",
        f"| trained groups with differing rewards | {off['useful_groups']}/{off['trained_groups']} | {on['useful_groups']}/{on['trained_groups']} |",
    ]
    for level in sorted(off["after"]):
        spec = LEVELS[level]
        name = f"level {level} (range {spec['range_size']}, {spec['max_turns']} turns)"
        lines.append(
            f"| held-out {name}: before -> after | {rate(off['before'][level])} -> {rate(off['after'][level])} "
            f"| {rate(on['before'][level])} -> {rate(on['after'][level])} |"
        )
    lines += [
        "",
        "Both runs start from the same checkpoint, so 'before' differs only by sampling noise of the",
        "evaluation episodes' order of play; compare each run's after with its before.",
    ]
    if off["tokens"] and abs(on["tokens"] - off["tokens"]) / off["tokens"] > 0.1:
        lines.append(
            f"The runs did not spend the same compute: on/off generated tokens = {on['tokens'] / off['tokens']:.2f}."
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke test, not a measurement")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml", help="base config")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 80; quick 3)")
    parser.add_argument("--bc-steps", type=int, default=None, help="BC steps of the shared warm start (default 60; quick 2)")
    parser.add_argument("--samples-per-problem", type=int, default=4, help="held-out episodes per problem")
    parser.add_argument("--heldout-fraction", type=float, default=0.25, help="share of each level held out")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds before a run is stopped")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="logs and raw results (git-ignored)")
    parser.add_argument("--report", type=Path, default=None, help="default reports/curation.md; quick: in --out")
    args = parser.parse_args(argv)
    args.config = args.config.resolve()
    if args.steps is None:
        args.steps = 3 if args.quick else 80
    if args.bc_steps is None:
        args.bc_steps = 2 if args.quick else 60
    if args.quick:
        args.samples_per_problem = 1
    if args.report is None:
        args.report = args.out / "curation-quick.md" if args.quick else HERE / "reports" / "curation.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    avs = _avs()
    base = yaml.safe_load(args.config.read_text())
    command = "python benchmarks/curation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from dartflow.tasks.training.checkpoints import latest_checkpoint

    with tempfile.TemporaryDirectory(prefix="dartflow-curation-") as tmp:
        root = Path(tmp)
        start_from = None
        if args.bc_steps:
            bc = bc_run_config(base, args, root)
            print(f"warm start: {args.bc_steps} BC steps", flush=True)
            avs.run_dartflow(bc, "sync", root, args.out / "curation-bc.log", args.run_timeout)
            start_from = latest_checkpoint(Path(bc["work_dir"]) / "runs" / bc["run_name"] / "checkpoints")
        results = {}
        for mode in MODES:
            config = run_config(base, args, root, mode, start_from)
            print(f"curation {mode}: {args.steps} steps", flush=True)
            avs.run_dartflow(config, "async", root, args.out / f"curation-{mode}.log", args.run_timeout)
            results[mode] = read_run(config)
        (args.out / ("curation-quick.json" if args.quick else "curation.json")).write_text(json.dumps(results, indent=1, default=str))
    text = report(args, results, command)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
