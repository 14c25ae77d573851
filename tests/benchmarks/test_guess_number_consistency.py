"""benchmarks/guess_number_consistency.py: consistent-guess shares read from per-turn rewards."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("guess_number_consistency", REPO / "benchmarks" / "guess_number_consistency.py")
consistency = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = consistency
spec.loader.exec_module(consistency)


def test_turns_paid_the_bonus_are_consistent_and_parts_follow_the_versions():
    rows = [
        {"min_policy_version": 7, "turn_rewards": [0.5, 0.0, 1.5], "success": True},  # secret = 1 + bonus
        {"min_policy_version": 3, "turn_rewards": [0.5, 0.0, 0.0, 0.0], "success": False},
        {"min_policy_version": 5, "turn_rewards": [0.5], "success": False},  # one turn: nothing after the first
    ]
    early, late = consistency.consistency_rows(rows, bonus=0.5, parts=2)
    assert early["versions"] == (3, 5) and early["episodes"] == 2 and early["success"] == 0.0
    assert early["consistent"] == pytest.approx(2 / 5) and early["consistent_after_first_turn"] == 0.0
    assert late["versions"] == (7, 7) and late["success"] == 1.0
    assert late["consistent"] == pytest.approx(2 / 3) and late["consistent_after_first_turn"] == pytest.approx(1 / 2)


def test_a_missing_run_is_a_clear_error(tmp_path, capsys):
    import lancedb
    import pyarrow as pa

    lancedb.connect(str(tmp_path / "lancedb")).create_table("trajectories", pa.table({
        "run_id": ["other"], "source": ["rollout"], "split": ["train"], "environment": ["guess_number"],
        "min_policy_version": [0], "turn_rewards": [[0.5]], "success": [False],
    }))
    assert consistency.main([str(tmp_path), "quickstart"]) == 1
    assert "no guess_number train rollouts of run 'quickstart'" in capsys.readouterr().err
