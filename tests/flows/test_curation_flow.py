"""Curation on the real stack: the train flow with difficulty-adaptive rollout counts and turn limits
(real engine, env workers, LanceDB, MLflow, Prefect); what it decided is read back from the stores."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from mlflow.tracking import MlflowClient

from dartflow.config import load_config
from dartflow.storage import TrajectoryStore

DARTFLOW = os.path.join(os.path.dirname(sys.executable), "dartflow")

CURATED = {
    "run_name": "curated",
    # 1-6 with 4 turns: a fresh policy solves some problems and not others within a few rounds.
    "environments": [{"name": "guess_number", "params": {"low": 1, "high": 6, "max_turns": 4}}],
    "cluster": {"num_workers": 1, "slots_per_worker": 8},
    "rollout": {
        "group_size": 2, "max_turns": 4, "max_new_tokens": 6, "max_staleness": 1, "concurrent_episodes": 8,
        "engine": {"max_model_len": 1024},
    },
    "training": {"steps": 4, "batch_size": 8, "micro_batch_size": 8, "bc_steps": 2, "bc_demonstrations": 8},
    "evaluation": {"every_versions": 0, "heldout_problems": 2},
    "tracking": {"model_name": "curated-policy"},
    "curation": {
        "rollout_budget": {"enabled": True, "min_group_size": 2, "max_group_size": 6, "rollouts_per_round": 8},
        "turn_limit": {"enabled": True, "min_turns": 1, "max_turns": 4},
    },
}


@pytest.mark.slow
def test_rollout_counts_and_turn_limits_follow_measured_difficulty(tmp_path):
    config_file = tmp_path / "curated.yaml"
    config_file.write_text(yaml.safe_dump({**CURATED, "work_dir": str(tmp_path / "work")}))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run([DARTFLOW, "train", str(config_file)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    config = load_config(config_file)
    store = TrajectoryStore(config.store_uri, run_id="curated")
    rows = store.as_of(
        store.version, where="source = 'rollout' AND split = 'train'",
        columns=["group_id", "problem_id", "num_turns", "success", "metadata_json"],
    ).to_pylist()
    plans = {r["group_id"]: json.loads(r["metadata_json"])["curation"] for r in rows}
    sizes = Counter(r["group_id"] for r in rows)
    assert max(p["round"] for p in plans.values()) >= 2  # the sampler re-planned from what it measured
    # Round 1 knows nothing: every problem unknown, the environment's turn bound.
    assert all(p["bucket"] == "unknown" and p["turn_limit"] == 4 for p in plans.values() if p["round"] == 1)
    # Later rounds: measured problems get a turn limit from their difficulty, and no episode exceeds it.
    measured = [p for p in plans.values() if p["bucket"] != "unknown"]
    assert measured and any(p["turn_limit"] < 4 for p in measured)
    for r in rows:
        assert r["num_turns"] <= plans[r["group_id"]]["turn_limit"]
    # Group sizes stay within [min, max] (a group cut by the run's end aside) and follow the bucket.
    assert all(size <= 6 for size in sizes.values())
    assert all(sizes[g] <= 2 for g, plan in plans.items() if plan["bucket"] in ("solved", "hopeless"))

    client = MlflowClient(config.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dartflow").experiment_id])
    rounds = [m.value for m in client.get_metric_history(run.info.run_id, "curation/round")]
    assert rounds and max(rounds) >= 2
    assert client.get_metric_history(run.info.run_id, "curation/problems_unknown")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "curation")}
    assert "curation/problems.parquet" in artifacts
    assert "plots/success_by_bucket.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
