"""benchmarks/learning.py: the record of a run and the report built from the records (pure parts)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from dartflow.config import load_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "learning.py"


@pytest.fixture(scope="module")
def learning():
    spec = importlib.util.spec_from_file_location("learning_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def record(learning, **changes):
    config = load_config(None, ["environments=[{name: 'reasoning_gym:gcd'}, {name: arithmetic}]", "training.bc_steps=10"])
    values = dict(
        config_path="configs/x.yaml", config=config.model_dump(mode="json"), seed=1, base=0.0,
        curve=[(10, 0.25), (30, 0.3), (50, 0.375)], heldout_episodes=128, wall_minutes=41.26,
        machine={"cpus": "2 (usable: 2)"}, command="python benchmarks/learning.py configs/x.yaml --seed 1", overrides=[],
    )
    return learning.learning_record(**{**values, **changes})


def test_the_record_takes_after_warmup_from_the_first_evaluation_and_final_from_the_last(learning):
    r = record(learning)
    assert (r["base"], r["after_warmup"], r["final"]) == (0.0, 0.25, 0.375)
    assert r["tasks"] == ["reasoning_gym:gcd", "arithmetic"] and r["model"] == "tiny" and r["seed"] == 1
    assert r["heldout_episodes"] == 128 and r["wall_minutes"] == 41.3 and r["bc_steps"] == 10


def test_a_run_without_an_evaluation_has_no_record(learning):
    with pytest.raises(ValueError, match="no held-out evaluation"):
        record(learning, curve=[])


def test_the_report_lists_every_run_with_its_gain_curve_and_command(learning):
    first = record(learning)
    second = {**record(learning, seed=2, curve=[(10, 0.5), (50, 0.25)]), "plot": "benchmarks/reports/p.png",
              "by_task": {"reasoning_gym:gcd": {"base": 0.0, "after_warmup": 0.5, "final": 0.25}}}
    text = learning.report_markdown([first, second])
    rows = [line for line in text.splitlines() if line.startswith("| `configs/x.yaml`")]
    assert len(rows) == 2
    assert "| 0.000 | 0.250 | 0.375 | +0.125 | 128 | 41.3 |" in rows[0]
    assert "| 0.000 | 0.500 | 0.250 | -0.250 |" in rows[1]
    assert "| held-out success | 0.250 | 0.300 | 0.375 |" in text
    assert "python benchmarks/learning.py configs/x.yaml --seed 1" in text and "![curve](p.png)" in text
    assert "reasoning_gym:gcd 0.000 -> 0.500 -> 0.250" in text
