"""Smoke test of benchmarks/rollout.py --quick: it runs end to end and writes a report with numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_rollout_benchmark_quick_writes_a_report(tmp_path):
    report = tmp_path / "rollout.md"
    command = [sys.executable, str(REPO / "benchmarks" / "rollout.py"), "--quick", "--problems", "4",
               "--out", str(tmp_path), "--report", str(report)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    ratio = float(re.search(r"\*\*service / raw = ([0-9.]+)\*\*", text).group(1))
    assert 0 < ratio < 10
    assert re.search(r"\| tiny \| [0-9.]+ \|", text)
    assert "vllm" in text and "## Machine" in text
    assert (tmp_path / "rollout-quick.json").is_file()
