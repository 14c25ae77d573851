"""The trainer benchmark runs end to end (`--quick`: a smoke test, not a measurement)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_quick_benchmark_writes_a_report_with_every_variant(tmp_path):
    completed = subprocess.run(
        [sys.executable, "benchmarks/trainer.py", "--quick", "--rounds", "2", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = (tmp_path / "trainer-quick.md").read_text()
    for row in ("| bare |", "| trainer |", "| trainer, full logits |", "| trainer, proximal recompute |"):
        assert row in report
    assert "trainer / bare = " in report and "benchmarks/trainer.py --quick" in report and "torch: 2." in report
