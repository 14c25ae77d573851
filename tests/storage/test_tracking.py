"""RunTracker against a real MLflow SQLite store (no server), read back with MlflowClient."""

import json
import math
from pathlib import Path

import mlflow
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient

from dartflow.config import RunConfig
from dartflow.storage.tracking import (
    CHANGED_PARAMS_TAG,
    NONFINITE_TAG,
    PREFECT_FLOW_RUN_TAG,
    RunTracker,
    artifact_location_for,
    download_policy,
    flatten_params,
    registered_version,
    run_link_markdown,
    set_model_alias,
    summary_rows,
)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # One database per module: the first client on a new file migrates it (~1.7 s).
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(tracking_uri) -> MlflowClient:
    return MlflowClient(tracking_uri)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_flatten_params_dots_nested_keys_indexes_lists_and_truncates_long_values():
    flat = flatten_params(
        {"training": {"lr": 1e-4, "steps": 20}, "model": {"path": None, "tie": False},
         "environments": [{"name": "guess_number", "params": {"low": 1}}], "ids": [1, 2], "empty": {},
         "long": "x" * 7000}
    )
    assert flat["training.lr"] == "0.0001" and flat["training.steps"] == "20"
    assert flat["model.path"] == "null" and flat["model.tie"] == "false"
    assert flat["environments.0.name"] == "guess_number" and flat["environments.0.params.low"] == "1"
    assert flat["ids"] == "[1, 2]" and flat["empty"] == "{}"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...[truncated]")


def test_sqlite_artifacts_live_next_to_the_db_never_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow' / 'mlflow.db'}"  # folder does not exist yet
    assert artifact_location_for(uri) == (tmp_path / "work" / "mlflow" / "artifacts").as_uri()
    assert artifact_location_for("http://127.0.0.1:5000") is None
    with RunTracker(uri, "dartflow", "where") as tracker:
        tracker.log_text("hello", "notes/hello.txt")
    assert (tmp_path / "work" / "mlflow" / "artifacts" / tracker.run_id / "artifacts" / "notes" / "hello.txt").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_config_params_yaml_tags_and_url_round_trip(tracking_uri, client):
    config = RunConfig(work_dir=Path("/tmp/wd")).model_dump(mode="json")
    with RunTracker(tracking_uri, "dartflow", "config-run", tags={PREFECT_FLOW_RUN_TAG: "flow-123"}) as tracker:
        logged = tracker.log_config(config)
        tracker.set_tags({"dartflow.mode": "async"})
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "config-run"
    assert run.data.params == logged
    assert run.data.params["training.lr"] == "0.0001"
    assert run.data.params["environments.0.name"] == "guess_number"
    assert run.data.params["work_dir"] == "/tmp/wd"
    assert run.data.tags[PREFECT_FLOW_RUN_TAG] == "flow-123" and run.data.tags["dartflow.mode"] == "async"
    assert client.download_artifacts(tracker.run_id, "config/config.yaml")  # exists
    yaml_text = Path(client.download_artifacts(tracker.run_id, "config/config.yaml")).read_text()
    assert "max_staleness: 2" in yaml_text
    url = tracker.run_url("http://127.0.0.1:5000/")
    assert url == f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}"
    assert f"[`{tracker.run_id}`]({url})" in run_link_markdown(tracker.run_id, url, experiment="dartflow")


def test_metrics_batched_by_version_and_nonfinite_values_skipped_and_counted(tracking_uri, client):
    tracker = RunTracker(tracking_uri, "dartflow", "metrics-run")
    many = {f"train/m{i:04d}": float(i) for i in range(1500)}  # more than one log_batch holds
    assert tracker.log_metrics(many, step=0) == 1500
    for version in (1, 2, 3):
        logged = tracker.log_metrics(
            {"train/loss": 1.0 / version, "rollout/reward_mean": 0.1 * version, "train/grad_norm": math.nan
             if version == 2 else 0.5, "train/kl": math.inf if version > 1 else 0.0},
            step=version,
        )
        assert logged == {1: 4, 2: 2, 3: 3}[version]
    assert tracker.nonfinite_counts == {"train/grad_norm": 1, "train/kl": 2}
    assert tracker.metric_history("train/loss") == ([1, 2, 3], [1.0, 0.5, 1.0 / 3])
    assert tracker.metric_history("train/grad_norm") == ([1, 3], [0.5, 0.5])
    with pytest.raises(TypeError, match="train/bad"):
        tracker.log_metrics({"train/bad": "high"}, step=4)
    tracker.end()
    tracker.end("FAILED")  # a second end changes nothing
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert len(run.data.metrics) == 1504 and run.data.metrics["train/m1499"] == 1499.0
    assert json.loads(run.data.tags[NONFINITE_TAG]) == {"train/grad_norm": 1, "train/kl": 2}
    rows = summary_rows({"train/loss": 0.25}, extra={"versions": 3})
    assert rows == [{"name": "versions", "value": "3"}, {"name": "train/loss", "value": "0.25"}]


def test_checkpoint_and_figure_artifacts(tracking_uri, client, tmp_path):
    checkpoint = tmp_path / "ckpt"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "sub" / "shard.bin").write_bytes(b"\0" * 16)
    figure = Figure()
    figure.subplots().plot([0, 1], [0, 1])
    with RunTracker(tracking_uri, "dartflow", "artifact-run") as tracker:
        assert tracker.log_checkpoint(checkpoint, 3) == "checkpoints/v000003"
        assert tracker.log_figure(figure, "reward") == "plots/reward.png"
    paths = artifact_paths(client, tracker.run_id)
    assert {"checkpoints/v000003/config.json", "checkpoints/v000003/sub/shard.bin", "plots/reward.png"} <= paths
    png = Path(client.download_artifacts(tracker.run_id, "plots/reward.png")).read_bytes()
    assert png.startswith(b"\x89PNG")


def test_context_manager_marks_failed_and_killed_runs(tracking_uri, client):
    with pytest.raises(RuntimeError):
        with RunTracker(tracking_uri, "dartflow", "boom") as failed:
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with RunTracker(tracking_uri, "dartflow", "ctrl-c") as killed:
            raise KeyboardInterrupt
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_resume_continues_the_same_run(tracking_uri, client):
    first = RunTracker(tracking_uri, "dartflow", "resumable", tags={PREFECT_FLOW_RUN_TAG: "flow-a"})
    first.log_config({"training": {"steps": 10, "lr": 0.001}})
    first.log_metrics({"train/loss": 1.0, "train/kl": math.nan}, step=0)
    first.log_metrics({"train/loss": 0.9}, step=1)
    first.end("KILLED")  # Ctrl-C; a SIGKILLed flow leaves it RUNNING, which resumes the same way

    run_id = RunTracker.find_run(tracking_uri, "dartflow", "resumable")
    assert run_id == first.run_id
    assert RunTracker.find_run(tracking_uri, "dartflow", "never-ran") is None
    assert RunTracker.find_run(tracking_uri, "no-such-experiment", "resumable") is None

    with RunTracker.resume(tracking_uri, run_id, tags={PREFECT_FLOW_RUN_TAG: "flow-b"}) as resumed:
        assert client.get_run(run_id).info.status == "RUNNING"
        assert resumed.log_config({"training": {"steps": 20, "lr": 0.001}, "seed": 1}) == {"seed": "1"}
        resumed.log_metrics({"train/loss": 0.8, "train/kl": math.inf}, step=2)
    assert resumed.run_id == run_id and resumed.run_name == "resumable"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2]
    assert run.data.params["training.steps"] == "10"  # params keep their first value
    assert run.data.tags[CHANGED_PARAMS_TAG] == "training.steps"
    assert run.data.tags[PREFECT_FLOW_RUN_TAG] == "flow-b" and run.data.tags["dartflow.resumed"] == "true"
    assert json.loads(run.data.tags[NONFINITE_TAG]) == {"train/kl": 2}
    assert len([p for p in artifact_paths(client, run_id) if p.startswith("config/config")]) == 2


def test_final_policy_registered_with_alias_and_loadable(tracking_uri, client, tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    assert registered_version(tracking_uri, "tiny-policy", "candidate") is None  # no model yet
    global_uri = mlflow.get_tracking_uri()
    with RunTracker(tracking_uri, "dartflow", "policy-run") as tracker:
        tracker.log_metrics({"eval/success": 0.5}, step=7)
        first = tracker.log_policy_and_register(tiny_model_dir, "tiny-policy", version=7, tags={"eval/success": 0.5})
        second = tracker.log_policy_and_register(tiny_model_dir, "tiny-policy")
    assert (first, second) == (1, 2)
    assert mlflow.get_tracking_uri() == global_uri  # borrowed for log_model, then given back
    version = client.get_model_version_by_alias("tiny-policy", "candidate")
    assert int(version.version) == 2 and version.run_id == tracker.run_id
    assert client.get_model_version("tiny-policy", "1").tags == {"eval/success": "0.5"}
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.experiment_id == tracker.experiment_id and logged.status == "READY"
    db_dir = Path(tracking_uri.removeprefix("sqlite:///")).parent
    assert logged.artifact_location.startswith((db_dir / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()
    assert registered_version(tracking_uri, "tiny-policy", "champion") is None
    set_model_alias(tracking_uri, "tiny-policy", "champion", first)
    assert registered_version(tracking_uri, "tiny-policy", "champion") == 1

    folder = download_policy(tracking_uri, "tiny-policy", "candidate", tmp_path / "dl")
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in Path(tiny_model_dir).iterdir())
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)
    assert download_policy(tracking_uri, "tiny-policy", "nope", tmp_path / "none") is None
