"""The pure parts of benchmarks/curation.py: configs per mode, and the numbers read from store rows."""

import importlib.util
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("curation_benchmark", REPO / "benchmarks" / "curation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()
BASE = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())


def test_the_two_runs_differ_only_in_names_and_the_curation_section(tmp_path):
    from dartflow.config import validate_config

    args = bench.parse_args(["--out", str(tmp_path)])
    off, on = (bench.run_config(BASE, args, tmp_path, mode, tmp_path / "ckpt") for mode in bench.MODES)
    differing = {"run_name", "work_dir", "tracking", "curation"}
    assert {k: v for k, v in off.items() if k not in differing} == {k: v for k, v in on.items() if k not in differing}
    assert "curation" not in off and on["curation"] == bench.CURATION_ON
    assert off["evaluation"]["heldout_problems"] == 1 + 4 + 16  # every held-out problem of the 3 levels (0.25 held out)
    assert off["model"]["path"] == str(tmp_path / "ckpt")
    for config in (*(bench.run_config(BASE, args, tmp_path, mode, None) for mode in bench.MODES),
                   bench.bc_run_config(BASE, args, tmp_path)):
        validate_config(config)


def test_useful_groups_are_those_whose_rewards_differ():
    batches = [
        [{"group_id": "a", "reward": 1.0}, {"group_id": "a", "reward": 0.0}, {"group_id": "b", "reward": 0.0},
         {"group_id": "b", "reward": 0.0}],
        [{"group_id": "c", "reward": 0.5}, {"group_id": "c", "reward": 0.5}, {"group_id": "d", "reward": 0.2},
         {"group_id": "d", "reward": 0.3}],
    ]
    assert bench.useful_group_share(batches) == (2, 4)


def test_success_by_level_counts_each_levels_episodes():
    rows = [{"problem_id": "p1", "success": True}, {"problem_id": "p1", "success": False}, {"problem_id": "p2", "success": True}]
    assert bench.success_by_level(rows, {"p1": 0, "p2": 2}) == {0: (1, 2), 2: (1, 1)}


def test_levels_are_read_back_from_the_problem_ids(tmp_path):
    from dartflow.tasks.envs.registry import make_problem_source

    env = bench.environment(bench.parse_args(["--out", str(tmp_path)]))
    source = make_problem_source(env["name"], env["params"])
    problems = source.heldout(21)
    levels = bench.level_of([p.problem_id for p in problems], env)
    assert [levels[p.problem_id] for p in problems] == [0] + [1] * 4 + [2] * 16
