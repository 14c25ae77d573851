"""LoRA vs full fine-tuning on one model: step time, peak memory, checkpoint write and engine swap.

    .venv/bin/python benchmarks/lora.py                      # SmolLM2-135M-Instruct (converted here), writes
                                                             # benchmarks/reports/lora.md + lora.json
    .venv/bin/python benchmarks/lora.py --model-dir DIR      # a HF folder already converted (untied head)
    .venv/bin/python benchmarks/lora.py --quick              # tiny model smoke run; benchmarks/out/lora-quick.*

Both variants are `Trainer.train_step` on the same batch of multi-turn trajectories (benchmarks/trainer.py's
builder), with `training.lora` off (full) and on (rank/alpha/targets below, the config's defaults):
- step time: the variants interleaved round by round after a warm-up step each; median per variant.
- peak memory: each variant alone in a fresh process: peak RSS (ru_maxrss) over building the trainer
  and 3 steps, and its growth over the RSS before the trainer was built (model + gradients + AdamW
  state + activations).
- checkpoint: `save_checkpoint` (LoRA: the merge into new tensors + the adapter files).
- swap: `RolloutEngine.update_weights` of the variant's checkpoint into one running engine (the
  dartflow worker extension: reload + LM-head checks), alternating with the base checkpoint; median.
  A LoRA checkpoint is merged full weights, so its swap reloads as much as a full one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import torch

HERE = Path(__file__).resolve().parent
VARIANTS = ("full", "lora")
BATCH = {"trajectories": 8, "group_size": 4, "micro_batch_size": 4, "turns": (1, 2), "prompt": (64, 128),
         "response": (16, 64), "observation": (8, 24)}  # fmt: skip
QUICK_BATCH = {**BATCH, "trajectories": 4, "micro_batch_size": 2}


def trainer_benchmark():
    """benchmarks/trainer.py as a module (the batch builder and the machine description)."""
    spec = importlib.util.spec_from_file_location("trainer_benchmark", HERE / "trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_for(variant: str, spec: dict, lora: dict):
    from dartflow.tasks.training.lora import LoraSettings
    from dartflow.tasks.training.settings import TrainerSettings

    return TrainerSettings(
        batch_size=spec["trajectories"], micro_batch_size=spec["micro_batch_size"], lr=1e-5,
        lora=LoraSettings(enabled=variant == "lora", **lora),
    )


def vocab_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def memory_probe(variant: str, model_dir: Path, spec: dict, lora: dict, threads: int) -> dict:
    """In a fresh process: RSS before the trainer, after building it, and the peak over 3 steps."""
    from dartflow.tasks.training.trainer import Trainer

    torch.set_num_threads(threads)
    batch = trainer_benchmark().multi_turn_batch(spec, vocab_size(model_dir))
    before = rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model_dir, checkpoint_root=Path(tmp), settings=settings_for(variant, spec, lora))
        built = rss_mib()
        for _ in range(3):
            trainer.train_step(batch)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    return {"rss_before_mib": before, "rss_built_mib": built, "peak_mib": peak, "growth_mib": peak - before,
            "trainable_parameters": trainable}


def probe_in_subprocess(variant: str, model_dir: Path, spec: dict, lora: dict, threads: int) -> dict:
    args = json.dumps({"variant": variant, "model_dir": str(model_dir), "spec": spec, "lora": lora, "threads": threads})
    completed = subprocess.run(
        [sys.executable, __file__, "--probe", args], capture_output=True, text=True, check=True, timeout=1800
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def time_steps(model_dir: Path, spec: dict, lora: dict, rounds: int, work: Path) -> tuple[dict, dict, dict]:
    """(step seconds per variant, checkpoint write seconds per variant, checkpoint folders) —
    each variant's base checkpoint (v0) and its checkpoint after the timed steps."""
    from dartflow.tasks.training.trainer import Trainer

    batch = trainer_benchmark().multi_turn_batch(spec, vocab_size(model_dir))
    trainers = {v: Trainer(model_dir, checkpoint_root=work / v, settings=settings_for(v, spec, lora)) for v in VARIANTS}
    folders = {v: {"base": trainer.save_checkpoint()} for v, trainer in trainers.items()}
    for trainer in trainers.values():
        trainer.train_step(batch)  # warm-up
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for index in range(rounds):
        for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
            started = time.perf_counter()
            trainers[variant].train_step(batch)
            seconds[variant].append(time.perf_counter() - started)
            print(f"round {index}: {variant:>4} step {seconds[variant][-1]:.3f} s", flush=True)
    save_s = {}
    for variant, trainer in trainers.items():
        started = time.perf_counter()
        folders[variant]["trained"] = trainer.save_checkpoint()
        save_s[variant] = time.perf_counter() - started
    return seconds, save_s, folders


async def time_swaps(model_dir: Path, folders: dict, swaps: int, kv_cache_gib: float) -> tuple[dict, float]:
    """Swap seconds per variant into one running engine (alternating trained / base), engine start seconds."""
    from dartflow.config import EngineConfig
    from dartflow.tasks.rollout.engine import RolloutEngine

    engine = RolloutEngine(
        folders["full"]["base"], engine=EngineConfig(kv_cache_space_gib=kv_cache_gib, max_model_len=512),
        max_context_tokens=511,
    )
    await engine.start()
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for index in range(swaps):
            for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
                folder = folders[variant]["trained"]
                seconds[variant].append(await engine.update_weights(engine.policy_version + 1, folder))
                await engine.update_weights(engine.policy_version + 1, folders[variant]["base"])
    finally:
        await engine.shutdown()
    return seconds, engine.start_s


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measure(model_dir: Path, args, work: Path) -> dict:
    spec = QUICK_BATCH if args.quick else BATCH
    lora = {"rank": args.rank, "alpha": args.alpha}
    memory = {v: probe_in_subprocess(v, model_dir, spec, lora, args.threads) for v in VARIANTS}
    for variant, probe in memory.items():
        print(f"{variant:>4}: peak RSS {probe['peak_mib']:.0f} MiB (+{probe['growth_mib']:.0f} over the bare process)", flush=True)
    step_s, save_s, folders = time_steps(model_dir, spec, lora, args.rounds, work)
    swap_s, start_s = asyncio.run(time_swaps(model_dir, folders, args.swaps, args.kv_cache_gib))
    from dartflow.tasks.training.lora import adapter_folder

    return {
        "model_dir": str(model_dir), "model": args.model_label, "batch": spec, "lora": lora, "threads": args.threads,
        "step_s": step_s, "save_s": save_s, "swap_s": swap_s, "engine_start_s": start_s, "memory": memory,
        "checkpoint_mib": {v: folder_mib(folders[v]["trained"]) for v in VARIANTS},
        "adapter_mib": folder_mib(adapter_folder(folders["lora"]["trained"])),
    }


def render(result: dict, command: str, machine: list, load: tuple, quick: bool) -> str:
    rows = []
    for variant in VARIANTS:
        memory = result["memory"][variant]
        rows.append(
            f"| {variant} | {memory['trainable_parameters'] / 1e6:.3f} M | {1000 * statistics.median(result['step_s'][variant]):.0f} | "
            f"{memory['peak_mib']:.0f} | {memory['growth_mib']:.0f} | {1000 * result['save_s'][variant]:.0f} | "
            f"{1000 * statistics.median(result['swap_s'][variant]):.0f} | {result['checkpoint_mib'][variant]:.1f} |"
        )
    full_step, lora_step = (statistics.median(result["step_s"][v]) for v in VARIANTS)
    full_mem, lora_mem = (result["memory"][v]["growth_mib"] for v in VARIANTS)
    return "\n".join([
        f"# LoRA vs full fine-tuning: {result['model']}" + (" (quick smoke run: not a measurement)" if quick else ""),
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with:",
        "", "```", command, "```", "",
        "## Machine", "",
        *[f"- {k}: {v}" for k, v in machine],
        f"- torch threads: {result['threads']}; load average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f}",
        "",
        "## Results", "",
        f"Batch: {result['batch']}. LoRA: rank {result['lora']['rank']}, alpha {result['lora']['alpha']}, the "
        "attention and MLP projections (training.lora defaults). Step: median of "
        f"{len(result['step_s']['full'])} interleaved rounds. Memory: a fresh process per variant. Swap: "
        f"`RolloutEngine.update_weights`, median of {len(result['swap_s']['full'])} (engine start "
        f"{result['engine_start_s']:.1f} s). See the docstring of benchmarks/lora.py.",
        "",
        "| variant | trainable | step (ms) | peak RSS (MiB) | RSS growth (MiB) | checkpoint write (ms) | swap (ms) | checkpoint (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- LoRA / full: step time {lora_step / full_step:.2f}, RSS growth {lora_mem / max(full_mem, 1e-9):.2f}.",
        f"- The adapter alone is {result['adapter_mib']:.2f} MiB on disk; the engine loads the merged full "
        "weights either way, so the swap moves as many bytes for both.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small batch, few rounds")
    parser.add_argument("--model-dir", type=Path, help="HF folder to measure (default: SmolLM2 converted here)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the trainer")
    parser.add_argument("--rounds", type=int, help="timed steps per variant (default 5; quick 2)")
    parser.add_argument("--swaps", type=int, help="timed swaps per variant (default 5; quick 2)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help="folder of the report (default: reports/, or out/ for --quick)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe = json.loads(args.probe)
        print(json.dumps(memory_probe(probe["variant"], Path(probe["model_dir"]), probe["spec"], probe["lora"], probe["threads"])))
        return
    torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.swaps = args.swaps or (2 if args.quick else 5)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dartflow-lora-bench-") as tmp:
        work = Path(tmp)
        if args.model_dir is not None:
            model_dir, args.model_label = args.model_dir.absolute(), args.model_dir.name
        elif args.quick:
            from dartflow.tasks.models.tiny import build_tiny_model

            model_dir, args.model_label = build_tiny_model(work / "tiny", seed=0), "tiny Llama (0.4 M)"
        else:
            from dartflow.tasks.models.smollm2 import convert_smollm2

            model_dir, args.model_label = convert_smollm2(work / "smollm2", dtype="float32"), "SmolLM2-135M-Instruct (float32)"
        result = measure(model_dir, args, work)
    command = "cd <repo> && .venv/bin/python " + shlex.join(["benchmarks/lora.py", *sys.argv[1:]])
    machine = trainer_benchmark().machine()
    report = render(result, command, machine, (load_before, os.getloadavg()[0]), args.quick)
    out = args.out or (HERE / "out" if args.quick else HERE / "reports")
    stem = "lora-quick" if args.quick else "lora"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps({**result, "command": command, "machine": dict(machine)}, indent=2))
    print(report)
    print(f"wrote {out / stem}.md and .json")


if __name__ == "__main__":
    main()
