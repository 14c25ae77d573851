"""benchmarks/envs.py --miniwob: the report's section handling, and a quick run in real browsers."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("envs_benchmark", REPO / "benchmarks" / "envs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


envs = _load_benchmark()


def test_miniwob_run_rewrites_only_its_section(tmp_path):
    path = tmp_path / "envs.md"
    envs.write_report(path, "# pool vs in-process\nguess_number v1\n", miniwob=False)
    envs.write_report(path, "## MiniWoB v1\n", miniwob=True)
    envs.write_report(path, "## MiniWoB v2\n", miniwob=True)
    text = path.read_text()
    assert "guess_number v1" in text and "MiniWoB v2" in text and "MiniWoB v1" not in text
    envs.write_report(path, "# pool vs in-process\nguess_number v2\n", miniwob=False)
    text = path.read_text()
    assert "guess_number v2" in text and "guess_number v1" not in text and "MiniWoB v2" in text
    assert text.count(envs.MINIWOB_MARKER) == 1


def test_miniwob_defaults_are_one_browser_per_worker():
    args = envs.parse_args(["--miniwob", "click-button,enter-text"])
    assert args.miniwob == ["click-button", "enter-text"]
    assert (args.workers, args.slots, args.episodes, args.repeats) == (4, 1, 100, 3)
    assert args.report == envs.HERE / "reports" / "envs.md"
    quick = envs.parse_args(["--miniwob", "click-button", "--quick"])
    assert quick.report.name == "envs-miniwob-quick.md" and (quick.workers, quick.slots) == (2, 1)
    plain = envs.parse_args([])  # the guess_number measurement keeps its sizes
    assert (plain.miniwob, plain.workers, plain.slots, plain.episodes) == (None, 4, 16, 3000)


@pytest.mark.slow
def test_quick_miniwob_benchmark_reports_both_settings_and_a_ratio(tmp_path):
    report = tmp_path / "report.md"
    command = [sys.executable, str(REPO / "benchmarks" / "envs.py"), "--miniwob", "click-button", "--quick",
               "--out", str(tmp_path), "--report", str(report)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| miniwob:click-button |"))
    alone, pool, ratio = re.match(r"\| \S+ \| ([0-9.]+) \| ([0-9.]+) \| \*\*([0-9.]+)x\*\*", row).groups()
    assert float(alone) > 0 and float(pool) > 0 and float(ratio) > 0
    assert "| 6/6 |" in row  # every scripted episode earned the checker's reward, in both settings
    assert "in-process" in text and "EnvironmentCluster(num_workers=2, slots_per_worker=1)" in text
    assert (tmp_path / "envs-miniwob-quick.json").is_file()
