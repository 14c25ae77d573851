"""The engine and the trainer in one CPU box: each one's tokens/s while the other works ÷ alone.

The layout is a run's (flows/train.py): the vLLM engine (AsyncLLM, its worker process) and the
trainer in a thread of the same process, the trainer's steps pinned by `tasks.cpu_split.pinned`.
For each core split — `all` (no pinning: vLLM's and torch's own thread counts, the behaviour before
the split) and `auto` (the run's default: on 2 cores the engine on core 0, the trainer on core 1):
1. engine alone: rounds of `--prompts` chat prompts x `--new-tokens` sampled tokens (temperature 1);
2. trainer alone: `--steps` decoupled-PPO steps on a fixed batch shaped like single-turn rollouts;
3. together: the same trainer steps while the engine generates rounds without a pause.
Rollout tok/s = sampled tokens / wall; trainer tok/s = input tokens through forward+backward / wall.
The target (issue 17): both ratios together ÷ alone >= 0.7 with the default split.

    .venv/bin/python benchmarks/cpu_split.py                      # SmolLM2-135M (~6 min on 2 cores)
    .venv/bin/python benchmarks/cpu_split.py --quick              # tiny model smoke run, report under benchmarks/out/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUESTION = "Calculate {a} + {b}. Put the final answer in <answer></answer> tags."


async def generate_round(engine, prompts: list[list[int]], new_tokens: int) -> int:
    from dartflow.tasks.rollout.generation import SamplingSettings

    generations = await asyncio.gather(*[
        engine.generate(prompt, max_new_tokens=new_tokens, sampling=SamplingSettings(temperature=1.0))
        for prompt in prompts
    ])
    return sum(len(g.token_ids) for g in generations)


async def engine_rate(engine, prompts, new_tokens: int, *, rounds: int | None = None, until=None) -> float:
    """Sampled tokens/s over `rounds` rounds, or over rounds until `until()` is true."""
    tokens, started, done = 0, time.perf_counter(), 0
    while (rounds is not None and done < rounds) or (until is not None and not until()):
        tokens += await generate_round(engine, prompts, new_tokens)
        done += 1
    return tokens / (time.perf_counter() - started)


def trainer_steps(trainer, batch, steps: int, cpus) -> float:
    """Input tokens/s of `steps` train steps, run pinned as the flow runs them."""
    from dartflow.tasks.cpu_split import pinned

    tokens, started = 0, time.perf_counter()
    with pinned(cpus):
        for _ in range(steps):
            tokens += int(trainer.train_step(batch).metrics["train/input_tokens"])
    return tokens / (time.perf_counter() - started)


async def measure_split(mode: str, model_dir: Path, batch, args, workdir: Path) -> dict:
    from transformers import AutoTokenizer

    from dartflow.config import EngineConfig
    from dartflow.tasks.cpu_split import split_for_run
    from dartflow.tasks.models.agreement import chat_prompt_ids
    from dartflow.tasks.rollout.engine import RolloutEngine
    from dartflow.tasks.training.settings import TrainerSettings
    from dartflow.tasks.training.trainer import Trainer

    split = split_for_run(mode, mode)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [chat_prompt_ids(tokenizer, QUESTION.format(a=i, b=2 * i + 1)) for i in range(args.prompts)]
    settings = TrainerSettings(batch_size=batch.num_rows, micro_batch_size=4, lr=1e-6)
    trainer = Trainer(model_dir, checkpoint_root=workdir / f"checkpoints-{mode}", settings=settings)
    engine = RolloutEngine(model_dir, engine=EngineConfig(kv_cache_space_gib=1, max_model_len=1024), cpu_ids=split.engine_cpus)
    await engine.start()
    try:
        await engine_rate(engine, prompts, args.new_tokens, rounds=1)  # warm-up: the first call is slow
        await asyncio.to_thread(trainer_steps, trainer, batch, 1, split.trainer_cpus)
        engine_alone = await engine_rate(engine, prompts, args.new_tokens, rounds=args.rounds)
        trainer_alone = await asyncio.to_thread(trainer_steps, trainer, batch, args.steps, split.trainer_cpus)
        finished = threading.Event()

        def train_then_signal() -> float:
            try:
                return trainer_steps(trainer, batch, args.steps, split.trainer_cpus)
            finally:
                finished.set()

        trainer_job = asyncio.create_task(asyncio.to_thread(train_then_signal))
        engine_together = await engine_rate(engine, prompts, args.new_tokens, until=finished.is_set)
        trainer_together = await trainer_job
    finally:
        await engine.shutdown()
    result = {
        "mode": mode, "split": split.describe(),
        "engine_alone": engine_alone, "engine_together": engine_together,
        "trainer_alone": trainer_alone, "trainer_together": trainer_together,
        "engine_ratio": engine_together / engine_alone, "trainer_ratio": trainer_together / trainer_alone,
    }
    print(
        f"{mode:>4} ({split.describe()}): rollout {engine_alone:6.1f} -> {engine_together:6.1f} tok/s "
        f"(x{result['engine_ratio']:.2f}) | trainer {trainer_alone:6.1f} -> {trainer_together:6.1f} tok/s "
        f"(x{result['trainer_ratio']:.2f}) | sum of the ratios {result['engine_ratio'] + result['trainer_ratio']:.2f}",
        flush=True,
    )
    return result


def render(results: list[dict], args, model: str, machine: dict, load: tuple[float, float]) -> str:
    lines = [
        "# Engine and trainer sharing a CPU box",
        "",
        f"Generated by `{args.command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Model: {model}. Engine: {args.prompts} prompts x {args.new_tokens} tokens per round, temperature 1; "
        f"trainer: {args.steps} steps on {args.trajectories} single-turn trajectories (prompt 64-128, response 16-48 "
        "tokens), full fine-tuning, float32.",
        "",
        "| split | cores | rollout tok/s alone | while training | ratio | trainer tok/s alone | while generating | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r['mode']}` | {r['split']} | {r['engine_alone']:.1f} | {r['engine_together']:.1f} | "
            f"**{r['engine_ratio']:.2f}** | {r['trainer_alone']:.1f} | {r['trainer_together']:.1f} | **{r['trainer_ratio']:.2f}** |"
        )
    lines += [
        "",
        "Ratios are each side's rate while the other works ÷ its rate alone under the same split (target >= 0.7",
        "for both with the default `auto`). `all` is the behaviour without a split: each library starts one",
        "thread per core. Alone rates differ between the splits: with `auto` each side has fewer cores.",
        "",
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu model')}), {machine.get('memory')}; "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after (other work on the machine skews the numbers).",
    ]
    return "\n".join(lines) + "\n"


async def main_async(args) -> list[dict]:
    sys.path.insert(0, str(HERE))  # the sibling benchmark's batch builder
    from trainer import multi_turn_batch
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.model_dir is not None:
            model_dir, model = args.model_dir, str(args.model_dir)
        elif args.quick:
            from dartflow.tasks.models.tiny import build_tiny_model

            model_dir, model = build_tiny_model(workdir / "tiny", seed=0), "tiny Llama (0.5 M parameters)"
        else:
            from dartflow.tasks.models.smollm2 import convert_smollm2

            model_dir, model = convert_smollm2(workdir / "smollm2", dtype="float32"), "SmolLM2-135M-Instruct (float32)"
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
        spec = {"trajectories": args.trajectories, "group_size": 8, "micro_batch_size": 4, "turns": (1, 1),
                "prompt": (64, 128), "response": (16, 48), "observation": (8, 24)}  # fmt: skip
        batch = multi_turn_batch(spec, vocab)
        return [await measure_split(mode, Path(model_dir), batch, args, workdir) for mode in args.modes]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, fewer rounds; report under benchmarks/out/")
    parser.add_argument("--model-dir", type=Path, default=None, help="an HF model folder instead of SmolLM2")
    parser.add_argument("--modes", nargs="+", default=["all", "auto"], choices=["all", "auto"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="engine rounds measured alone")
    parser.add_argument("--steps", type=int, default=3, help="trainer steps measured alone and together")
    parser.add_argument("--trajectories", type=int, default=16, help="trajectories per train step")
    args = parser.parse_args(argv)
    args.command = shlex.join([".venv/bin/python", "benchmarks/cpu_split.py", *(argv if argv is not None else sys.argv[1:])])
    if args.quick:
        args.rounds, args.steps = 2, 2
    sys.path.insert(0, str(HERE))
    from envs import machine as describe_machine

    machine, load_before = describe_machine(), os.getloadavg()[0]
    results = asyncio.run(main_async(args))
    out = HERE / ("out" if args.quick else "reports")
    out.mkdir(parents=True, exist_ok=True)
    model = "tiny Llama" if args.quick and args.model_dir is None else str(args.model_dir or "SmolLM2-135M-Instruct (float32)")
    (out / "cpu_split.md").write_text(render(results, args, model, machine, (load_before, os.getloadavg()[0])))
    (out / "cpu_split.json").write_text(json.dumps({"command": args.command, "model": model, "results": results}, indent=1) + "\n")
    print(f"report: {out / 'cpu_split.md'}")


if __name__ == "__main__":
    main()
