"""Environment steps/s: the worker pool (EnvironmentCluster) vs the same environment called in-process.

The in-process baseline is the naive loop: one instance, episodes one after another, each step
awaited before the next. The pool runs the same episodes (same problems, same actions) all at
once on `--workers` processes. Both are measured in one run, for a fast environment and for the
same environment behind the latency knob (lognormal, median 20 ms: a tool call, a browser, an API),
and the ratio pool/in-process is printed and written to benchmarks/reports/envs.md.

With `--miniwob TASK[,TASK...]` it measures MiniWoB++ tasks in headless Chromium instead, one task
at a time: the actions come from the tasks' scripted demonstrations (miniwob_demos.py), which read
each observation, so every episode clicks and types its way to the checker's reward. In-process is
one instance (one browser) playing the episodes one after another; the pool has one browser per
slot. Browser start-up is timed apart from the steps. That run rewrites only the MiniWoB section of
benchmarks/reports/envs.md, and the run without `--miniwob` keeps it.

    .venv/bin/python benchmarks/envs.py            # full run, rewrites benchmarks/reports/envs.md
    .venv/bin/python benchmarks/envs.py --quick    # smoke run (seconds); report under benchmarks/out/
    .venv/bin/python benchmarks/envs.py --miniwob click-button,enter-text,click-checkboxes   # ~3 min
    .venv/bin/python benchmarks/envs.py --miniwob click-button --quick                      # ~15 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import subprocess
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
    start_s: float = 0.0  # pool: spawning the workers; miniwob in-process: its browser (not in `seconds`)
    utilization: float = 0.0  # pool: mean busy fraction of the workers
    warmup_s: float = 0.0  # miniwob pool: the round that starts every slot's browser (not in `seconds`)
    successes: int = 0  # miniwob: episodes the checker rewarded
    cpu_cores: float = 0.0  # miniwob: CPU seconds of this process and its descendants / `seconds`

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


# ---- MiniWoB++: scripted episodes in real browsers ---------------------------------------------------


def miniwob_script(task: str):
    """The task's demonstration script as a policy: observations so far -> next action."""
    from dartflow.tasks.envs.miniwob_demos import TASK_SCRIPTS, demonstration_script

    script = demonstration_script(task)
    if script is None:
        raise SystemExit(f"miniwob:{task} has no demonstration script; scripted tasks: {', '.join(TASK_SCRIPTS)}")
    rng = random.Random(0)  # the scripts read only the page; the rng is part of their signature
    return lambda observations: script(observations, rng)


def tree_cpu_s() -> float:
    """CPU seconds of this process and its live descendants (workers, chromedriver, Chromium)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:  # ended between the listing and the read
            continue
        total += times.user + times.system
    return total


def play(environment, problem, policy, turns: int) -> tuple[int, bool]:
    """One episode in-process: (steps, success)."""
    observations = [environment.reset(problem)]
    for turn in range(1, turns + 1):
        result = environment.step(policy(observations))
        observations.append(result.observation)
        if result.done:
            return turn, bool(result.info.get("success"))
    return turns, False


def miniwob_in_process(task: str, problems: list, args: argparse.Namespace) -> Measurement:
    from dartflow.tasks.envs.registry import make_environment

    name, policy = f"miniwob:{task}", miniwob_script(task)
    started = time.perf_counter()
    environment = make_environment(name, {})
    try:
        play(environment, problems[0], policy, args.turns)  # its first reset starts the browser
        start_s = time.perf_counter() - started
        runs = []
        for _ in range(args.repeats):
            cpu_before, started = tree_cpu_s(), time.perf_counter()
            played = [play(environment, problem, policy, args.turns) for problem in problems]
            seconds = time.perf_counter() - started
            steps, successes = sum(s for s, _ in played), sum(ok for _, ok in played)
            cores = (tree_cpu_s() - cpu_before) / seconds
            runs.append(Measurement("in-process", name, len(problems), steps, seconds, start_s,
                                    successes=successes, cpu_cores=cores))
    finally:
        environment.close()  # no browser outlives the measurement
    return median_run(runs)


async def miniwob_pool(task: str, problems: list, args: argparse.Namespace) -> Measurement:
    from dartflow.tasks.envs.cluster import EnvironmentCluster

    name, policy = f"miniwob:{task}", miniwob_script(task)
    cluster = EnvironmentCluster([(name, {})], num_workers=args.workers, slots_per_worker=args.slots)

    async def episode(problem) -> tuple[int, bool]:
        async with cluster.episode(problem) as running:
            observations = [running.observation]
            for turn in range(1, args.turns + 1):
                result = await running.step(policy(observations))
                observations.append(result.observation)
                if result.done:
                    return turn, bool(result.info.get("success"))
            return args.turns, False

    started = time.perf_counter()
    async with cluster:
        start_s = time.perf_counter() - started
        started = time.perf_counter()
        # one episode per slot at once: every slot starts its browser, as in-process did before timing
        await asyncio.gather(*(episode(problem) for problem in problems[: args.workers * args.slots]))
        warmup_s = time.perf_counter() - started
        runs = []
        for _ in range(args.repeats):
            before, cpu_before, started = cluster.stats(), tree_cpu_s(), time.perf_counter()
            played = await asyncio.gather(*(episode(problem) for problem in problems))
            seconds = time.perf_counter() - started
            utilization = cluster.stats().since(before).utilization
            steps, successes = sum(s for s, _ in played), sum(ok for _, ok in played)
            runs.append(Measurement("pool", name, len(problems), steps, seconds, start_s, utilization, warmup_s,
                                    successes, (tree_cpu_s() - cpu_before) / seconds))
    return median_run(runs)


async def measure_miniwob(args: argparse.Namespace) -> list[tuple[Measurement, Measurement]]:
    from dartflow.tasks.envs.registry import make_problem_source

    results = []
    for task in args.miniwob:
        source = make_problem_source(f"miniwob:{task}", {})
        problems = [source.problem("train", index) for index in range(args.episodes)]
        alone = miniwob_in_process(task, problems, args)
        pool = await miniwob_pool(task, problems, args)
        if (alone.steps, alone.successes) != (pool.steps, pool.successes):
            raise RuntimeError(f"miniwob:{task}: the settings did different work (steps, successes: "
                               f"{alone.steps, alone.successes} vs {pool.steps, pool.successes})")
        print(f"miniwob:{task}: in-process {alone.steps_per_s:6.1f} steps/s | pool {pool.steps_per_s:6.1f} steps/s "
              f"| ratio {pool.steps_per_s / alone.steps_per_s:5.2f}x | {pool.steps} steps, {pool.successes}/"
              f"{pool.episodes} rewarded | CPU cores {alone.cpu_cores:.2f} / {pool.cpu_cores:.2f}", flush=True)
        results.append((alone, pool))
    return results


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


def generated_by() -> list[str]:
    """The report lines saying when and with which command it was measured."""
    return [
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by:",
        "",
        "```",
        "cd <repo> && " + shlex.join([".venv/bin/python", "benchmarks/envs.py", *sys.argv[1:]]),
        "```",
    ]


def report(args: argparse.Namespace, results: list[tuple[Measurement, Measurement]]) -> str:
    lines = [
        "# Environment cluster: steps/s of the worker pool vs in-process",
        "",
        *generated_by(),
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


MINIWOB_MARKER = "<!-- The section below is rewritten by `benchmarks/envs.py --miniwob ...`; other runs keep it. -->"


def chromium_version() -> str:
    from dartflow.tasks.envs.miniwob_browser import find_browser

    paths = find_browser()
    versions = [subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
                for path in (paths.chromium, paths.chromedriver)]
    return " / ".join(versions)


def miniwob_report(args: argparse.Namespace, results: list[tuple[Measurement, Measurement]]) -> str:
    from importlib import metadata

    lines = [
        "## MiniWoB++ in headless Chromium: steps/s of the pool vs in-process",
        "",
        *generated_by(),
        "",
        *[f"- {key}: {value}" for key, value in machine().items()],
        f"- browser: {chromium_version()}; miniwob {metadata.version('miniwob')}, "
        f"selenium {metadata.version('selenium')}",
        f"- load average (1 min) before/after the run: {args.load[0][0]:.2f} / {args.load[1][0]:.2f} "
        "(other processes on the machine share its cores and skew the numbers)",
        "",
        "Setup:",
        "",
        f"- environments: `miniwob:<task>` with default params; {args.episodes} train problems (seeds 0..."
        f"{args.episodes - 1}) per task, median of {args.repeats} round(s), the same problems in both settings",
        "- actions: the task's scripted demonstration (`demonstration_script`), which reads every observation "
        "and answers in the text grammar (`click(ref)`, `type(ref, \"text\")`); both settings must take the "
        "same steps and earn the same rewards, or the run fails",
        "- steps/s = the steps / the seconds of the round; a round includes the resets (each loads the task's "
        "page), as an RL rollout does",
        "- in-process: one instance, one browser, episodes one after another; start-up = building it plus a "
        "first episode (the browser starts at the first reset), not timed",
        f"- pool: `EnvironmentCluster(num_workers={args.workers}, slots_per_worker={args.slots})`, one browser "
        "per slot, all episodes opened at once with asyncio; start-up = spawning the workers + a warm-up round "
        "of one episode per slot (each starts its browser), not timed",
        "- CPU cores = CPU seconds of the benchmark's process tree (workers, chromedriver, Chromium) over the "
        "round / its seconds: what the measurement itself used of the machine",
        "",
        "| task | in-process steps/s | pool steps/s | pool / in-process | steps (episodes) | rewarded "
        "| start-up in-process (s) | start-up pool: workers + browsers (s) | pool utilization "
        "| CPU cores in-process / pool |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for alone, pool in results:
        lines.append(
            f"| {alone.environment} | {alone.steps_per_s:.1f} | {pool.steps_per_s:.1f} | "
            f"**{pool.steps_per_s / alone.steps_per_s:.2f}x** | {pool.steps} ({pool.episodes}) "
            f"| {pool.successes}/{pool.episodes} | {alone.start_s:.2f} | {pool.start_s:.2f} + {pool.warmup_s:.2f} "
            f"| {pool.utilization:.2f} | {alone.cpu_cores:.2f} / {pool.cpu_cores:.2f} |"
        )
    return "\n".join(lines + ["", *miniwob_findings(args, results)]) + "\n"


def miniwob_findings(args: argparse.Namespace, results: list[tuple[Measurement, Measurement]]) -> list[str]:
    usable = len(os.sched_getaffinity(0))
    each = lambda value, pick: ", ".join(format(value(m), pick) for m in results)
    cpu_ms = lambda m: 1000 * m.cpu_cores / m.steps_per_s  # CPU milliseconds per step, all processes
    # the cores' bound: every usable core busy at the pool's CPU cost per step, over the in-process rate
    bound = lambda pair: usable * 1000 / cpu_ms(pair[1]) / pair[0].steps_per_s
    browsers = args.workers * args.slots
    return [
        "What the numbers say:",
        "",
        f"- pool / in-process: {each(lambda r: r[1].steps_per_s / r[0].steps_per_s, '.2f')} (x), with "
        f"{args.workers} workers x {args.slots} slot(s) on {usable} usable cores. In-process, one episode loop "
        f"keeps {each(lambda r: r[0].cpu_cores, '.2f')} cores busy: Python, chromedriver and Chromium (page load, "
        "JavaScript, layout, the DOM read back after every action) take turns, so one loop is about one core "
        "of work, not a wait.",
        f"- A browser step costs CPU, unlike the latency knob's sleep: {each(lambda r: cpu_ms(r[0]), '.0f')} ms of "
        f"CPU per step in-process vs {each(lambda r: cpu_ms(r[1]), '.0f')} ms in the pool (all processes, resets "
        "included). The pool does not make a step cheaper, it runs several at once, so here the cores bound it: "
        f"it kept {each(lambda r: r[1].cpu_cores, '.2f')} of {usable} busy, and {usable} cores at the pool's CPU "
        f"per step allow at most {each(bound, '.2f')} (x) the in-process rate, before what other processes take "
        "(see the load average). More workers or slots cannot lift that on this machine; with more cores the "
        "pool scales further, by up to its number of workers (a worker runs one step at a time; slots beyond "
        "one per worker buy concurrent episodes, not concurrent steps).",
        f"- Start-up is a one-off cost: in-process {each(lambda r: r[0].start_s, '.2f')} s for one browser (and a "
        f"first episode); the pool {each(lambda r: r[1].warmup_s, '.2f')} s for its {browsers} browsers started at "
        f"once on {usable} cores, plus {each(lambda r: r[1].start_s, '.2f')} s to spawn the workers. Each slot "
        "pays it once: instances are reused across episodes (reset, not restart).",
    ]


def write_report(path: Path, part: str, miniwob: bool) -> None:
    """Write `part` to `path`, keeping the other run's part of an existing report."""
    existing = path.read_text() if path.exists() else ""
    head, found, tail = existing.partition(MINIWOB_MARKER)
    if miniwob:
        text = (head.rstrip("\n") + "\n\n" if head.strip() else "") + MINIWOB_MARKER + "\n\n" + part
    else:
        text = part + ("\n" + MINIWOB_MARKER + tail if found else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
    parser.add_argument("--miniwob", type=lambda text: [t for t in text.split(",") if t], default=None,
                        metavar="TASK[,TASK...]", help="measure these MiniWoB++ tasks (scripted) instead")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the pool (default 4; quick 2; miniwob 4, quick 2)")
    parser.add_argument("--slots", type=int, default=None,
                        help="slots per worker (default 16; quick 4; miniwob: browsers per worker, 1)")
    parser.add_argument("--turns", type=int, default=8, help="most steps per episode")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes of the fast environment (miniwob: per task, default 100; quick 6)")
    parser.add_argument("--slow-episodes", type=int, default=None, help="episodes of the slow environment")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of the fast environment (median kept; miniwob: per task, default 3; quick 1)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="raw results (git-ignored)")
    parser.add_argument(
        "--report", type=Path, default=None, help="Markdown report (default reports/envs.md; quick: in --out)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(workers=(2, 4), slots=(4, 16), episodes=(40, 3000), slow_episodes=(8, 120), repeats=(1, 5))
    if args.miniwob is not None:
        defaults.update(workers=(2, 4), slots=(1, 1), episodes=(6, 100), repeats=(1, 3))
    for name, (quick_value, full_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick_value if quick else full_value)
    if args.report is None:
        name = "envs-miniwob-quick.md" if args.miniwob is not None else "envs-quick.md"
        args.report = args.out / name if quick else HERE / "reports" / "envs.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    miniwob = args.miniwob is not None
    load_before = os.getloadavg()
    results = asyncio.run(measure_miniwob(args) if miniwob else measure(args))
    args.load = (load_before, os.getloadavg())
    write_report(args.report, (miniwob_report if miniwob else report)(args, results), miniwob)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / ("envs" + ("-miniwob" if miniwob else "") + ("-quick" if args.quick else "") + ".json")
    raw.write_text(json.dumps([[asdict(alone), asdict(pool)] for alone, pool in results], indent=2))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
