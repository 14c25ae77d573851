"""How a run's guess_number policy uses the answers, from its train rollouts in the store.

For each sixth of the run's train rollouts (oldest first): the success rate and the share of guesses
inside the interval the answers so far leave open (a "consistent" guess). A consistent guess is read
from the stored per-turn rewards, so the run's guess_number must pay `consistent_guess_bonus` (the
quickstart's 0.5): a turn reward of at least the bonus is a consistent guess (the secret itself earns
1 + bonus; no step cost may be set).

    .venv/bin/python benchmarks/guess_number_consistency.py dartflow-data quickstart [--bonus 0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def consistency_rows(rows: list[dict], bonus: float, parts: int = 6) -> list[dict]:
    """Pure: rows (min_policy_version, turn_rewards, success) -> one summary per consecutive part."""
    rows = sorted(rows, key=lambda row: row["min_policy_version"])
    size = max(1, -(-len(rows) // parts))
    summaries = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        rewards = np.concatenate([np.asarray(row["turn_rewards"], dtype=float) for row in chunk])
        later = np.concatenate([np.asarray(row["turn_rewards"][1:], dtype=float) for row in chunk])
        summaries.append({
            "versions": (chunk[0]["min_policy_version"], chunk[-1]["min_policy_version"]),
            "episodes": len(chunk),
            "success": float(np.mean([row["success"] for row in chunk])),
            "consistent": float(np.mean(rewards >= bonus - 1e-9)),
            "consistent_after_first_turn": float(np.mean(later >= bonus - 1e-9)) if later.size else float("nan"),
        })
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dir", type=Path, help="the run's work dir (its lancedb/ folder holds the store)")
    parser.add_argument("run_name")
    parser.add_argument("--bonus", type=float, default=0.5, help="the run's consistent_guess_bonus")
    args = parser.parse_args(argv)
    if args.bonus <= 0:
        parser.error("--bonus must be > 0: without the bonus the turn rewards do not tell consistent guesses")
    import lancedb

    table = lancedb.connect(str(args.work_dir / "lancedb")).open_table("trajectories")
    columns = ["run_id", "source", "split", "environment", "min_policy_version", "turn_rewards", "success"]
    rows = [
        row for row in table.to_arrow().select(columns).to_pylist()
        if row["run_id"] == args.run_name and row["source"] == "rollout" and row["split"] == "train"
        and row["environment"] == "guess_number"
    ]
    if not rows:
        print(f"no guess_number train rollouts of run {args.run_name!r} in {args.work_dir}", file=sys.stderr)
        return 1
    for part in consistency_rows(rows, args.bonus):
        low, high = part["versions"]
        print(f"versions {low}-{high}: {part['episodes']} episodes, success {part['success']:.2f}, consistent guesses "
              f"{part['consistent']:.2f} ({part['consistent_after_first_turn']:.2f} after the first turn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
