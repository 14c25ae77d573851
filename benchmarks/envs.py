"""Environment steps/s: the worker pool (EnvironmentCluster) vs the same environment called in-process.

The in-process baseline is the naive loop: one instance, episodes one after another, each step
awaited before the next. The pool runs the same episodes (same problems, same actions) all at
once on `--workers` processes. Both are measured in one run, for a fast environment and for the
same environment behind the latency knob (lognormal, median 20 ms: a tool call, a browser, an API),
and the ratio pool/in-process is printed and written to benchmarks/reports/envs.md.

    .venv/bin/python benchmarks/envs.py            # full run, rewrites benchmarks/reports/envs.md
    .venv/bin/python benchmarks/envs.py --quick    # smoke run (seconds); report under benchmarks/out/
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ENVIRONMENT = "guess_number"
LATENCY = {"kind": "lognormal", "median": 0.02, "sigma": 0.5, "max_seconds": 0.2}


@dataclass
class Measurement:
    setting: str  # "in-process" | "pool"
    environment: str
    episodes: int
    steps: int
    seconds: float
    start_s: float = 0.0  # pool: spawning the workers (not in `seconds`)
    utilization: float = 0.0  # pool: mean busy fraction of the workers

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def actions_for(turns: int) -> list[str]:
    # The same action script for every episode, so both settings do exactly the same work; an
    # action the environment finds wrong still costs a step, which is all that is measured here.
    return [str(50 + 7 * turn) for turn in range(turns)]


def problems_for(params: dict[str, Any], count: int) -> list:
    from dartflow.tasks.envs.registry import make_problem_source

    source = make_problem_source(ENVIRONMENT, params)
    size = source.size("train")
    return [source.problem("train", index % size) for index in range(count)]


def run_in_process(label: str, params: dict[str, Any], problems: list, actions: list[str], repeats: int) -> Measurement:
    from dartflow.tasks.envs.registry import make_environment

    environment = make_environment(ENVIRONMENT, params)
    runs = []
    for _ in range(repeats):
        steps = 0
        started = time.perf_counter()
        for problem in problems:
            environment.reset(problem)
            for action in actions:
                steps += 1
                if environment.step(action).done:
                    break
        runs.append(Measurement("in-process", label, len(problems), steps, time.perf_counter() - started))
    environment.close()
    return median_run(runs)


async def run_pool(
    label: str, params: dict[str, Any], problems: list, actions: list[str], args: argparse.Namespace, repeats: int
) -> Measurement:
    from dartflow.tasks.envs.cluster import EnvironmentCluster

    cluster = EnvironmentCluster([(ENVIRONMENT, params)], num_workers=args.workers, slots_per_worker=args.slots)
    started = time.perf_counter()
    async with cluster:
        start_s = time.perf_counter() - started

        async def episode(problem) -> int:
            async with cluster.episode(problem) as running:
                for turn, action in enumerate(actions, start=1):
                    if (await running.step(action)).done:
                        return turn
                return len(actions)

        # Warm-up, not measured: every slot builds its instance (the first one per worker also
        # imports the environment's modules), as the in-process instance was built before timing.
        await asyncio.gather(*(episode(problem) for problem in problems[: args.workers * args.slots]))
        runs = []
        for _ in range(repeats):
            before = cluster.stats()
            started = time.perf_counter()
            steps = sum(await asyncio.gather(*(episode(problem) for problem in problems)))
            seconds = time.perf_counter() - started
            utilization = cluster.stats().since(before).utilization
            runs.append(Measurement("pool", label, len(problems), steps, seconds, start_s, utilization))
    return median_run(runs)


def median_run(runs: list[Measurement]) -> Measurement:
    return sorted(runs, key=lambda run: run.steps_per_s)[len(runs) // 2]


def machine() -> dict[str, str]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import psutil

    import dartflow

    return {
        "cpus": f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})",
        "cpu model": model,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "dartflow": dartflow.__version__,
        "psutil": psutil.__version__,
    }


def report(args: argparse.Namespace, results: list[tuple[Measurement, Measurement]]) -> str:
    lines = [
        "# Environment cluster: steps/s of the worker pool vs in-process",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by:",
        "",
        "```",
        "cd <repo> && " + shlex.join([".venv/bin/python", "benchmarks/envs.py", *sys.argv[1:]]),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine().items()],
        "",
        "## Setup",
        "",
        f"- environment: `{ENVIRONMENT}`; slow = the same behind the latency knob `{json.dumps(LATENCY)}`",
        f"- {args.episodes} episodes (fast, median of {args.repeats} rounds) / {args.slow_episodes} episodes (slow, "
        f"one round), at most {args.turns} steps each, the same problems and actions in both settings",
        "- in-process: one instance, episodes one after another (the naive loop)",
        f"- pool: `EnvironmentCluster(num_workers={args.workers}, slots_per_worker={args.slots})`, all episodes "
        "opened at once with asyncio after a warm-up round that builds every slot's instance; worker start-up "
        "time is reported apart, not in the steps/s",
        f"- load average (1 min) before/after the run: {args.load[0][0]:.2f} / {args.load[1][0]:.2f} "
        "(other processes on the machine share its cores and skew the numbers)",
        "",
        "## Results",
        "",
        "| environment | in-process steps/s | pool steps/s | pool / in-process | steps | pool start (s) "
        "| pool utilization |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for alone, pool in results:
        lines.append(
            f"| {alone.environment} | {alone.steps_per_s:,.0f} | {pool.steps_per_s:,.0f} | "
            f"{pool.steps_per_s / alone.steps_per_s:.2f}x | {pool.steps} | {pool.start_s:.2f} "
            f"| {pool.utilization:.2f} |"
        )
    fast, slow = results
    lines += [
        "",
        "## What the numbers say",
        "",
        f"- fast: the pool's ceiling is the cost of moving a step, about {1e6 / fast[1].steps_per_s:.0f} µs of CPU "
        "per step (pickling, the socket, the event loop, process wake-ups), against "
        f"{1e6 / fast[0].steps_per_s:.1f} µs "
        "for the step itself in-process: the pool pays off only for steps much slower than that, which is "
        "what it exists for (tools, browsers, games, sandboxes).",
        f"- slow: the ideal ratio is {args.workers}x (each worker runs one step at a time and the latency is a "
        f"sleep); measured {slow[1].steps_per_s / slow[0].steps_per_s:.2f}x. Slots beyond one per worker buy "
        "concurrency of episodes, not of steps: more throughput on slow environments needs more workers.",
    ]
    return "\n".join(lines) + "\n"


async def measure(args: argparse.Namespace) -> list[tuple[Measurement, Measurement]]:
    actions = actions_for(args.turns)
    settings = [
        ("fast", {}, args.episodes, args.repeats),
        # one round: ~20 ms a call makes it long enough, and its draws average out over the episodes
        ("slow (20 ms)", {"latency": LATENCY}, args.slow_episodes, 1),
    ]
    results = []
    for label, params, count, repeats in settings:
        problems = problems_for(params, count)
        alone = run_in_process(label, params, problems, actions, repeats)
        pool = await run_pool(label, params, problems, actions, args, repeats)
        if alone.steps != pool.steps:
            raise RuntimeError(f"{label}: the settings did different work ({alone.steps} vs {pool.steps} steps)")
        print(
            f"{label:>14}: in-process {alone.steps_per_s:10,.0f} steps/s | pool {pool.steps_per_s:10,.0f} steps/s "
            f"| ratio {pool.steps_per_s / alone.steps_per_s:6.2f}x "
            f"| {pool.steps} steps, utilization {pool.utilization:.2f}",
            flush=True,
        )
        results.append((alone, pool))
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few episodes: a smoke test, not a measurement")
    parser.add_argument("--workers", type=int, default=None, help="worker processes of the pool (default 4; quick 2)")
    parser.add_argument("--slots", type=int, default=None, help="slots per worker (default 16; quick 4)")
    parser.add_argument("--turns", type=int, default=8, help="most steps per episode")
    parser.add_argument("--episodes", type=int, default=None, help="episodes of the fast environment")
    parser.add_argument("--slow-episodes", type=int, default=None, help="episodes of the slow environment")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of the fast environment (median kept)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="raw results (git-ignored)")
    parser.add_argument(
        "--report", type=Path, default=None, help="Markdown report (default reports/envs.md; quick: in --out)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(workers=(2, 4), slots=(4, 16), episodes=(40, 3000), slow_episodes=(8, 120), repeats=(1, 5))
    for name, (quick_value, full_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick_value if quick else full_value)
    if args.report is None:
        args.report = args.out / "envs-quick.md" if quick else HERE / "reports" / "envs.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    results = asyncio.run(measure(args))
    args.load = (load_before, os.getloadavg())
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report(args, results))
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / ("envs-quick.json" if args.quick else "envs.json")
    raw.write_text(json.dumps([[asdict(alone), asdict(pool)] for alone, pool in results], indent=2))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
