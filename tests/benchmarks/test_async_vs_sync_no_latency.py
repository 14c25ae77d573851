"""benchmarks/async_vs_sync.py on environments as they are (`--no-latency`, e.g. MiniWoB++) and `--set`."""

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("async_vs_sync_own", REPO / "benchmarks" / "async_vs_sync.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


avs = _load_benchmark()


def args(*argv: str):
    return avs.parse_args(["--out", "/tmp/unused", *argv])


def test_no_latency_keeps_the_environments_and_the_configs_cluster(tmp_path):
    options = args("--config", str(QUICKSTART), "--no-latency")
    base = yaml.safe_load(QUICKSTART.read_text())
    assert (options.workers, options.slots) == (base["cluster"]["num_workers"], base["cluster"]["slots_per_worker"])
    configs = {mode: avs.mode_config(base, options, tmp_path, mode, None, None) for mode in avs.MODES}
    assert configs["async"]["environments"] == base["environments"]  # no `latency` param added
    assert configs["async"]["run_name"] == "avs-async" and configs["sync"]["run_name"] == "avs-sync"
    same = lambda config: {k: v for k, v in config.items() if k not in ("run_name", "work_dir", "tracking")}
    assert same(configs["async"]) == same(configs["sync"])


def test_latency_stays_the_default():
    options = args()
    assert options.latency_median == [0.1] and (options.workers, options.slots) == (16, 2)
    assert avs.latency_spec(None, options) is None
    assert avs.latency_label(avs.latency_spec(0.1, options)) == "latency median 0.1 s"


def test_set_overrides_nested_keys_as_yaml_values():
    base = {"curation": {"dynamic_sampling": {"enabled": True}}, "training": {"steps": 3}}
    changed = avs.apply_overrides(base, ["curation.dynamic_sampling.enabled=false", "training.steps=12",
                                         "cluster.num_workers=3"])
    assert changed == {"curation": {"dynamic_sampling": {"enabled": False}}, "training": {"steps": 12},
                       "cluster": {"num_workers": 3}}
    assert base["curation"]["dynamic_sampling"]["enabled"] is True  # the base is left alone
    with pytest.raises(ValueError, match="KEY=VALUE"):
        avs.apply_overrides(base, ["training.steps"])


def test_set_reaches_the_cluster_defaults():
    options = args("--config", str(QUICKSTART), "--no-latency", "--set", "cluster.num_workers=3")
    assert options.workers == 3


def test_summary_table_names_a_setting_without_injected_latency():
    result = avs.summarize("async", _histories())
    setting = avs.Setting(None, {"async": result, "sync": result})
    row = avs.summary_table([setting])[-1]
    assert row.startswith("| none injected |") and "**1.00x**" in row


def _histories():
    steps, times = [1, 2, 3], [102.0, 104.0, 106.0]
    per_step = lambda values: [(s, t, v) for s, t, v in zip(steps, times, values)]
    constant = lambda value: per_step([value] * 3)
    return {
        "train/batch_trajectories": constant(16), "train/skipped": constant(0), "train/step_seconds": constant(0.5),
        "train/staleness_mean": constant(0.0), "env/wall_s": per_step([10.0, 12.0, 14.0]),
        "env/utilization": constant(0.5), "env/timeouts": constant(0), "rollout/wall_s": per_step([4.0, 6.0, 8.0]),
        "rollout/idle_fraction": constant(0.25), "rollout/staleness_gate_wait_s": constant(0.0),
        "rollout/slot_utilization": constant(0.5), "eval/heldout_success": [(0, 100.0, 0.25), (3, 110.0, 0.25)],
        "eval/heldout_episodes": [(0, 100.0, 8), (3, 110.0, 8)], "eval/seconds": [(0, 100.0, 1.0), (3, 110.0, 1.0)],
    }
