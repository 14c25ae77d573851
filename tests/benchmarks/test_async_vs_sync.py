"""The pure parts of benchmarks/async_vs_sync.py: configs per mode and the numbers read from metric histories."""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("async_vs_sync", REPO / "benchmarks" / "async_vs_sync.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


avs = _load_benchmark()
BASE = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())


def args(*argv: str) -> argparse.Namespace:
    return avs.parse_args(["--out", "/tmp/unused", *argv])


def test_modes_differ_only_in_run_name_and_work_dir(tmp_path):
    options = args()
    configs = {mode: avs.mode_config(BASE, options, tmp_path, mode, 0.1, tmp_path / "ckpt") for mode in avs.MODES}
    a, s = configs["async"], configs["sync"]
    assert a["run_name"] != s["run_name"] and a["work_dir"] != s["work_dir"]
    same = lambda config: {k: v for k, v in config.items() if k not in ("run_name", "work_dir", "tracking")}
    assert same(a) == same(s)
    assert all(spec["params"]["latency"] == {"kind": "lognormal", "median": 0.1, "sigma": 1.5, "max_seconds": 10.0}
               for spec in a["environments"])
    assert a["training"]["bc_steps"] == 0 and a["evaluation"]["every_versions"] == 0
    assert a["model"]["source"] == "path" and a["model"]["path"] == str(tmp_path / "ckpt")
    assert "latency" not in BASE["environments"][0]["params"]  # the base config is left alone


def test_mode_configs_validate(tmp_path):
    from dartflow.config import validate_config

    for mode in avs.MODES:
        validate_config(avs.mode_config(BASE, args(), tmp_path, mode, 0.1, None))
    bc = avs.bc_config(BASE, args(), tmp_path)
    assert validate_config(bc).training.steps == 0
    assert all("latency" not in spec.get("params", {}) for spec in bc["environments"])


def test_interval_utilization_takes_the_busy_time_between_two_cumulative_snapshots():
    # 10 s at 0.5 busy, then 30 s more at 0.9 busy: cumulative 0.8 over 40 s
    assert avs.interval_utilization((0.5, 10.0), (0.8, 40.0)) == pytest.approx(0.9)
    assert avs.interval_utilization((0.5, 10.0), (0.5, 10.0)) == 0.0


def histories(skipped_step: bool = False):
    """Four steps logged 2 s apart after an evaluation at t=100 that took 5 s; the final one at t=120."""
    steps = [1, 2, 3, 3, 4] if skipped_step else [1, 2, 3, 4]
    times = [102.0 + 2 * i for i in range(len(steps))]
    per_step = lambda values: [(s, t, v) for s, t, v in zip(steps, times, values)]
    n = len(steps)
    return {
        "train/batch_trajectories": per_step([16, 15, 16, 16, 16][:n]),
        "train/skipped": per_step(([0, 0, 1, 0, 0] if skipped_step else [0] * 4)[:n]),
        "train/step_seconds": per_step([0.5] * n),
        "train/staleness_mean": per_step([0.0, 1.0, 9.0, 1.0, 1.0][:n] if skipped_step else [0.0, 1.0, 1.0, 1.0]),
        "env/wall_s": per_step([10.0 + 2 * i for i in range(n)]),
        "env/utilization": per_step([0.5] * n),
        "env/timeouts": per_step([0] * n),
        "rollout/wall_s": per_step([4.0 + 2 * i for i in range(n)]),
        "rollout/idle_fraction": per_step([0.25] * n),
        "rollout/staleness_gate_wait_s": per_step([1.0 + i for i in range(n)]),
        "rollout/slot_utilization": per_step([0.5] * n),
        "eval/heldout_success": [(0, 100.0, 0.25), (4, 130.0, 0.5)],
        "eval/heldout_episodes": [(0, 100.0, 40), (4, 130.0, 40)],
        "eval/seconds": [(0, 100.0, 5.0), (4, 130.0, 6.0)],
    }


def test_summarize_counts_trained_trajectories_over_the_rl_loop():
    result = avs.summarize("async", histories())
    assert (result.steps, result.trajectories) == (4, 63)
    assert result.loop_s == pytest.approx(8.0)  # first evaluation logged at 100, last step at 108
    assert result.trained_per_s == pytest.approx(63 / 8)
    assert (result.steady_trajectories, result.steady_s) == (47, pytest.approx(6.0))  # steps 2..4
    assert result.env_utilization == pytest.approx(0.5)
    assert result.rollout_idle == pytest.approx(0.25) and result.slots_busy == pytest.approx(0.5)
    assert result.gate_wait == pytest.approx(0.5)  # 3 s of gate wait over 6 s
    assert result.drain_s == pytest.approx(130.0 - 6.0 - 108.0)
    assert (result.heldout_before, result.heldout_after, result.heldout_episodes) == (0.25, 0.5, 40)


def test_summarize_leaves_skipped_steps_out():
    result = avs.summarize("async", histories(skipped_step=True))
    assert (result.steps, result.trajectories) == (4, 63)  # the skipped step's 16 did not train
    assert result.staleness == pytest.approx(0.75)


def test_summarize_needs_three_steps():
    two = {name: points[:2] for name, points in histories().items()}
    with pytest.raises(ValueError, match="at least 3"):
        avs.summarize("sync", two)


def test_summarize_splits_the_run_into_thirds():
    result = avs.summarize("async", histories())
    assert result.cycle_thirds == pytest.approx((2.0, 2.0, 2.0))  # 102, 104 | 106 | 108 after the eval at 100
    assert result.staleness_thirds == pytest.approx((0.0, 1.0, 1.0))
    assert result.final_version == 4


def test_thirds_cover_every_value_once():
    assert avs.thirds([1, 2, 3]) == (1, 2, 3)
    assert avs.thirds([0, 0, 3, 3, 3, 6, 6]) == pytest.approx((0, 3, 6))


def test_success_noise_is_never_zero_and_shrinks_with_episodes():
    assert avs.success_noise(0.0, 0.0, 40) > 0
    assert avs.success_noise(0.5, 0.5, 100) == pytest.approx(2 * math.sqrt(2 * 0.25 / 100))
    assert avs.success_noise(0.3, 0.3, 400) < avs.success_noise(0.3, 0.3, 100)


@pytest.mark.slow
def test_quick_benchmark_runs_both_modes_and_writes_a_report(tmp_path):
    import re
    import subprocess

    report = tmp_path / "report.md"
    command = [sys.executable, str(REPO / "benchmarks" / "async_vs_sync.py"), "--quick", "--steps", "3",
               "--bc-steps", "0", "--out", str(tmp_path), "--report", str(report)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = report.read_text()
    ratio = float(re.search(r"\*\*async / sync = ([0-9.]+)x\*\*", text).group(1))
    assert 0 < ratio < 20
    assert "| optimizer steps | 3 | 3 |" in text and "## Machine" in text
    assert (tmp_path / "async_vs_sync-quick.json").is_file()
