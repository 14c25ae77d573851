"""Curation on the real stack: the train flow with difficulty-adaptive rollout counts and turn limits,
dynamic sampling, the experience pool, high-entropy step selection and duration weights (real engine, env workers,
LanceDB, MLflow, Prefect); what it decided is read back from the stores."""

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
    "training": {"steps": 4, "batch_size": 8, "micro_batch_size": 8, "bc_steps": 2, "bc_demonstrations": 32},
    "evaluation": {"every_versions": 0, "heldout_problems": 2},
    "tracking": {"model_name": "curated-policy"},
    "curation": {
        "rollout_budget": {"enabled": True, "min_group_size": 2, "max_group_size": 6, "rollouts_per_round": 8},
        "turn_limit": {"enabled": True, "min_turns": 1, "max_turns": 4},
        "dynamic_sampling": {"enabled": True},
        # Seeded with the warm-up's successful demonstrations; 0 of 2 attempts is already hard (p = 0.25).
        "experience_pool": {"enabled": True, "capacity_per_problem": 2},
        "step_selection": {"enabled": True, "keep_fraction": 0.5},
        "duration": {"mode": "weight"},
    },
}


@pytest.mark.slow
def test_curation_decisions_follow_measured_difficulty_and_are_read_back_from_the_stores(tmp_path):
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

    # Experience pool: a group without any successful rollout trained with one pooled success of its problem.
    # Dynamic sampling: every trained group has rewards that differ (a pooled success counts).
    injected = 0
    for version in range(2, 2 + 4):  # after 2 BC versions, 4 RL steps
        batch = store.replay(version, columns=["group_id", "problem_id", "source", "success", "reward", "metadata_json"]).to_pylist()
        for group in {r["group_id"] for r in batch}:
            assert len({r["reward"] for r in batch if r["group_id"] == group}) > 1, (version, group)
        for row in (r for r in batch if r["source"] == "pool"):
            injected += 1
            members = [r for r in batch if r["group_id"] == row["group_id"] and r["source"] == "rollout"]
            assert members and not any(r["success"] for r in members) and row["success"]
            assert all(r["problem_id"] == row["problem_id"] for r in members)
            assert json.loads(row["metadata_json"])["pooled_from"]["trajectory_id"]
    assert injected > 0
    assert store.pool_count() > 0

    # High-entropy step selection: per trained version, exactly ceil(0.5 x turns) turns, the highest-entropy ones.
    for version in range(2, 2 + 4):
        selection = store.step_selection(version).to_pylist()
        assert {r["trajectory_id"] for r in selection} == set(store.lineage(version)["trajectory_id"].to_pylist())
        kept = [e for r in selection for t, e in enumerate(r["turn_entropies"]) if t in r["kept_turns"]]
        dropped = [e for r in selection for t, e in enumerate(r["turn_entropies"]) if t not in r["kept_turns"]]
        assert len(kept) == -(-(len(kept) + len(dropped)) // 2)
        assert min(kept) >= max(dropped, default=float("-inf"))

    client = MlflowClient(config.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dartflow").experiment_id])
    rounds = [m.value for m in client.get_metric_history(run.info.run_id, "curation/round")]
    assert rounds and max(rounds) >= 2
    for name in ("curation/problems_unknown", "curation/pool_injections", "curation/groups_dropped_total", "train/turns_kept_frac",
                 "train/trajectory_weight_mean", "curation/duration_batch_corr"):
        assert client.get_metric_history(run.info.run_id, name), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "curation")}
    assert "curation/problems.parquet" in artifacts
    assert "plots/success_by_bucket.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
