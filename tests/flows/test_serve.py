"""Scheduled retraining on the real stack: `dartflow serve` registers the retrain deployment with a
cron schedule; two runs triggered through Prefect's API train from the champion and apply the
promotion rule, one promoted (no champion yet), one kept as candidate (a margin no policy can beat)."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dartflow.config import load_config

DARTFLOW = os.path.join(os.path.dirname(sys.executable), "dartflow")

RETRAIN = {
    "run_name": "nightly",
    "environments": [{"name": "guess_number", "params": {"low": 1, "high": 8}}],
    "cluster": {"num_workers": 1, "slots_per_worker": 8},
    "rollout": {
        "group_size": 4, "max_turns": 4, "max_new_tokens": 8, "max_staleness": 1, "concurrent_episodes": 8,
        "engine": {"max_model_len": 1024},
    },
    "training": {"steps": 2, "batch_size": 8, "micro_batch_size": 8, "bc_steps": 2, "bc_demonstrations": 16, "bc_max_turns": 2},
    "evaluation": {"every_versions": 0, "heldout_problems": 2},
    "tracking": {"checkpoint_artifact_every": 0, "model_name": "nightly-policy"},
}
CRON = "0 3 * * *"


async def deployment_of(name: str, timeout_s: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            try:
                return await client.read_deployment_by_name(name)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)


async def run_to_the_end(deployment_id, parameters: dict, timeout_s: float = 400):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        deadline = time.monotonic() + timeout_s
        while not (flow_run.state and flow_run.state.is_final()):
            assert time.monotonic() < deadline, f"flow run {flow_run.id} still {flow_run.state}"
            await asyncio.sleep(2)
            flow_run = await client.read_flow_run(flow_run.id)
        artifacts = await client.read_artifacts()
        return flow_run, artifacts


@pytest.mark.slow
def test_serve_registers_a_scheduled_deployment_whose_runs_apply_the_promotion_rule(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    config_file = tmp_path / "nightly.yaml"
    config_file.write_text(yaml.safe_dump({**RETRAIN, "work_dir": str(tmp_path / "work")}))
    config = load_config(config_file)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([DARTFLOW, "serve", str(config_file), "--cron", CRON], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (match := re.search(r"Prefect API (\S+)", (tmp_path / "serve.log").read_text())):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: match.group(1)}):
            deployment = asyncio.run(deployment_of("dartflow-retrain/nightly"))
            assert [s.schedule.cron for s in deployment.schedules] == [CRON]
            assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
            assert "config" in deployment.parameter_openapi_schema["properties"]  # the config's fields as parameters

            parameters = deployment.parameters
            first, artifacts = asyncio.run(run_to_the_end(deployment.id, parameters))
            assert first.state.is_completed(), (tmp_path / "serve.log").read_text()[-4000:]
            # A margin no policy can beat: the second run stays candidate.
            strict = {**parameters["config"], "tracking": {**parameters["config"]["tracking"], "promotion": {"margin": 1.0}}}
            second, artifacts = asyncio.run(run_to_the_end(deployment.id, {"config": strict}))
            assert second.state.is_completed(), (tmp_path / "serve.log").read_text()[-4000:]
        assert sum(1 for a in artifacts if a.key == "promotion") == 2
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()

    client = MlflowClient(config.mlflow_uri)
    assert int(client.get_model_version_by_alias("nightly-policy", "champion").version) == 1
    assert int(client.get_model_version_by_alias("nightly-policy", "candidate").version) == 2
    runs = client.search_runs([client.get_experiment_by_name("dartflow").experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["dartflow.promotion"] for r in runs] == ["promoted", "kept as candidate"]
    assert runs[0].data.tags["dartflow.start_model"].startswith("configured model")
    assert runs[1].data.tags["dartflow.start_model"] == "nightly-policy champion v1"
    assert runs[1].data.metrics["promotion/heldout_episodes"] > 0
    assert "promotion/champion_heldout_success" in runs[1].data.metrics
    assert "promotion/champion_heldout_success" not in runs[0].data.metrics
    assert all(r.data.tags["dartflow.run_name"].startswith("nightly-") for r in runs)  # a fresh run name each time
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, leftovers
