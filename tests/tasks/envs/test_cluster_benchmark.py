"""The environment benchmark runs end to end (`--quick`: a smoke test, not a measurement)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_quick_benchmark_writes_a_report_with_both_environments(tmp_path):
    completed = subprocess.run(
        [sys.executable, "benchmarks/envs.py", "--quick", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = (tmp_path / "envs-quick.md").read_text()
    assert "| fast |" in report and "| slow (20 ms) |" in report
    assert "cpu model" in report and "benchmarks/envs.py --quick" in report
    assert (tmp_path / "envs-quick.json").is_file()
