"""The store benchmark stays runnable: its --quick mode runs end to end and writes a report."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_store_benchmark_quick_mode_writes_a_report(tmp_path):
    report = tmp_path / "store.md"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/store.py",
            "--quick",
            "--out",
            str(tmp_path / "work"),
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout and "next_batch at" in result.stdout
    text = report.read_text()
    assert "cpu model" in text and "lancedb" in text and "--quick" in text
    assert "| 2,000 |" in text and "| 10,000 |" in text
