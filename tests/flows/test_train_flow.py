"""The train flow end to end: real vLLM engine, env workers, LanceDB, MLflow and a Prefect flow run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

DARTFLOW = Path(sys.executable).parent / "dartflow"

SMALL = {
    "run_name": "e2e",
    "environments": [{"name": "guess_number", "params": {"low": 1, "high": 8}}],
    "cluster": {"num_workers": 1, "slots_per_worker": 8},
    "rollout": {
        "group_size": 4, "max_turns": 4, "max_new_tokens": 8, "max_staleness": 1, "concurrent_episodes": 8,
        "engine": {"max_model_len": 1024},
    },
    "training": {"steps": 4, "batch_size": 8, "micro_batch_size": 8, "bc_steps": 2, "bc_demonstrations": 16,
                 "bc_max_turns": 2},
    "evaluation": {"every_versions": 2, "heldout_problems": 4},
    "tracking": {"checkpoint_artifact_every": 2, "model_name": "e2e-policy"},
}

def small_run(tmp_path, steps: int) -> tuple[Path, dict[str, str]]:
    """A SMALL config of `steps` RL steps without periodic evaluation, and the environment of its process."""
    config = tmp_path / "small.yaml"
    small = {**SMALL, "work_dir": str(tmp_path / "work"), "training": {**SMALL["training"], "steps": steps}}
    small["evaluation"] = {"every_versions": 0, "heldout_problems": 2}
    config.write_text(yaml.safe_dump(small))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return config, env


PREFECT_QUERY = textwrap.dedent(
    """
    import asyncio, json, sys
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def main(flow_run_id):
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            artifacts = await client.read_artifacts()
        print(json.dumps({
            "state": flow_run.state.type.value,
            "task_runs": [
                {"name": t.name, "start": t.start_time.timestamp(), "end": t.end_time.timestamp(),
                 "state": t.state.type.value}
                for t in task_runs if t.start_time and t.end_time
            ],
            "artifacts": [a.key for a in artifacts],
        }))

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_train_flow_end_to_end(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**SMALL, "work_dir": str(tmp_path / "work")}))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run([str(DARTFLOW), "train", str(config)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "held-out success at version" in result.stdout

    from mlflow import MlflowClient

    from dartflow.config import load_config
    from dartflow.storage import TrajectoryStore

    run_config = load_config(config)
    store = TrajectoryStore(run_config.store_uri, run_id="e2e")
    rollouts = store.as_of(store.version, where="source = 'rollout' AND split = 'train'")
    assert rollouts.num_rows >= 4 * 8
    # Per-turn versions are recorded and consistent with the trajectory's range.
    for turn_min, low in zip(rollouts["turn_min_policy_version"].to_pylist(), rollouts["min_policy_version"].to_pylist()):
        assert turn_min and min(turn_min) == low
    # Lineage: one batch per RL step, never staler than the bound.
    bc_versions = 2  # BC steps also advance the version
    for version in range(bc_versions, bc_versions + 4):
        lineage = store.lineage(version)
        assert lineage.num_rows > 0, f"no lineage for trainer version {version}"
        assert max(version - v for v in lineage["min_policy_version"].to_pylist()) <= 1
    assert store.count("source = 'demonstration'") == 16
    demonstration_turns = store.as_of(store.version, where="source = 'demonstration'")["num_turns"].to_pylist()
    assert max(demonstration_turns) == 2  # training.bc_max_turns, not rollout.max_turns (4)
    assert store.count("split = 'heldout'") > 0

    client = MlflowClient(run_config.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dartflow").experiment_id])
    assert run.data.params["training.batch_size"] == "8"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(set(steps)) == 4
    # Held-out evaluation at the start, every 2 versions, and at the end.
    assert len(client.get_metric_history(run.info.run_id, "eval/heldout_success")) >= 3
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "checkpoints" in artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/reward_success.png", "plots/staleness.png", "plots/timeline.png"} <= plots
    assert int(client.get_model_version_by_alias("e2e-policy", "candidate").version) == 1
    flow_run_id = run.data.tags["prefect.flow_run_id"]

    query = subprocess.run(
        [sys.executable, "-c", PREFECT_QUERY, flow_run_id], env=env, capture_output=True, text=True, timeout=300
    )
    assert query.returncode == 0, query.stderr[-3000:]
    prefect = json.loads(query.stdout.strip().splitlines()[-1])
    assert prefect["state"] == "COMPLETED"
    assert {"mlflow-run", "run-summary"} <= set(prefect["artifacts"])
    train_runs = [t for t in prefect["task_runs"] if t["name"].startswith("train v")]
    (rollout,) = [t for t in prefect["task_runs"] if t["name"].startswith("rollout")]
    assert len(train_runs) == 4
    # Asynchrony visible in Prefect: training task runs happen while the rollout task run is running.
    assert any(rollout["start"] < t["start"] and t["end"] < rollout["end"] for t in train_runs)


@pytest.mark.slow
def test_resume_after_sigkill_loses_nothing_and_trains_nothing_twice(tmp_path):
    import signal
    import time

    steps = 6
    config, env = small_run(tmp_path, steps)
    process = subprocess.Popen(
        [str(DARTFLOW), "train", str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    output = []
    deadline = time.time() + 600
    for line in process.stdout:
        output.append(line)
        if "| step 2/" in line or time.time() > deadline:
            break
    os.killpg(process.pid, signal.SIGKILL)  # the whole run: flow, engine, env workers
    process.wait(timeout=60)
    assert any("| step 2/" in line for line in output), "".join(output)[-3000:]

    from dartflow.config import load_config
    from dartflow.storage import TrajectoryStore

    run_config = load_config(config)
    store = TrajectoryStore(run_config.store_uri, run_id="e2e")
    acknowledged = set(store.as_of(store.version, columns=["trajectory_id"])["trajectory_id"].to_pylist())

    resumed = subprocess.run(
        [str(DARTFLOW), "train", "--resume", str(config)], env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    store = TrajectoryStore(run_config.store_uri, run_id="e2e")
    after = set(store.as_of(store.version, columns=["trajectory_id"])["trajectory_id"].to_pylist())
    assert acknowledged <= after  # nothing acknowledged before the kill is lost
    bc_versions = SMALL["training"]["bc_steps"]
    consumed = []
    for version in range(bc_versions, bc_versions + steps):
        lineage = store.lineage(version)
        assert lineage.num_rows > 0, f"version {version} has no batch: versions did not continue"
        consumed += lineage["trajectory_id"].to_pylist()
    assert store.lineage(bc_versions + steps).num_rows == 0
    assert len(consumed) == len(set(consumed))  # no trajectory trained twice
    assert f"held-out success at version {bc_versions + steps}" in resumed.stdout
