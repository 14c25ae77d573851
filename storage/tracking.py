"""MLflow tracking: one MLflow run per flow run, written through one thin object.

    tracker = RunTracker(config.mlflow_uri, config.tracking.experiment, config.run_name,
                         tags={PREFECT_FLOW_RUN_TAG: flow_run_id})
    with tracker:
        tracker.log_config(config.model_dump(mode="json"))
        tracker.log_metrics({"train/loss": 0.4, "rollout/reward_mean": 0.2}, step=version)
        tracker.log_checkpoint(checkpoint_dir, version)
        tracker.log_policy_and_register(final_dir, config.tracking.model_name)   # alias "candidate"

Everything goes through an `MlflowClient` bound to the run's tracking URI, never through MLflow's
process-global "active run", so the flow, the trainer thread and a test can each hold their own run.
The one exception is logging and registering the final policy: `mlflow.transformers.log_model`
and the registry's `models:/` lookup only read the global URI, so it is set for those two calls
and restored after.

With a SQLite URI (the default `sqlite:///<work_dir>/mlflow/mlflow.db`) the experiment's artifacts
go to `<dir of the db>/artifacts`: nothing lands in a `mlruns/` folder of the current directory.
The first client on a new database creates and migrates its tables (~1.6 s on this machine; opening
an existing one costs ~0.8 s per process, plus ~2 s to import mlflow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

log = logging.getLogger(__name__)

PREFECT_FLOW_RUN_TAG = "prefect.flow_run_id"
NONFINITE_TAG = "dartflow.nonfinite_metrics"
CHANGED_PARAMS_TAG = "dartflow.changed_params"
CONFIG_ARTIFACT_DIR = "config"
POLICY_ARTIFACT_NAME = "policy"
POLICY_SUBDIR = "model"  # where mlflow.transformers keeps the HF folder inside a logged model
_TRUNCATED = "...[truncated]"


def artifact_location_for(tracking_uri: str) -> str | None:
    """`<dir of the db>/artifacts` as a file URI for a SQLite store file; None (server decides) otherwise.

    Also creates the db's folder: SQLite cannot create a file in a missing directory.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not db_path or db_path == ":memory:":
        return None
    db_dir = Path(db_path).expanduser().resolve().parent
    db_dir.mkdir(parents=True, exist_ok=True)
    return (db_dir / "artifacts").as_uri()


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"training.lr": "0.0001", "environments.0.name": "guess_number", ...}.

    Lists of mappings are indexed (`environments.0.name`); other lists, None and bools are written
    as JSON (`[1, 2]`, `null`, `true`) so a param reads like the YAML it came from.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                flat.update(flatten_params(item, f"{name}.{index}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return {_fit_key(key): _fit_value(value, MAX_PARAM_VAL_LENGTH) for key, value in flat.items()}


def _fit_key(key: str) -> str:
    if len(key) <= MAX_ENTITY_KEY_LENGTH:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]  # keeps two long keys from colliding
    return f"{key[: MAX_ENTITY_KEY_LENGTH - 9]}~{digest}"


def _fit_value(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(_TRUNCATED)] + _TRUNCATED


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _has_code(exc: MlflowException, *codes: int) -> bool:
    return exc.error_code in {ErrorCode.Name(code) for code in codes}


class RunTracker:
    """One MLflow run: config, metrics per policy version, checkpoints, figures, the final policy."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        *,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ):
        """Start a new run, or continue `run_id` (set back to RUNNING) when given."""
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._lock = threading.Lock()
        self._ended = False
        self.nonfinite_counts: Counter[str] = Counter()
        if run_id is None:
            self.experiment_id = self._experiment_id(experiment)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=_tag_dict(tags or {}))
        else:
            run = self.client.get_run(run_id)
            if run.info.lifecycle_stage != "active":
                raise ValueError(f"MLflow run {run_id} is deleted; restore it before resuming")
            self.experiment_id = run.info.experiment_id
            # Counts of a crashed process are lost; continue from what was recorded.
            self.nonfinite_counts.update(json.loads(run.data.tags.get(NONFINITE_TAG, "{}")))
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name
        self.artifact_uri: str = run.info.artifact_uri
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.set_tags({**(tags or {}), "dartflow.resumed": "true"})

    @classmethod
    def resume(cls, tracking_uri: str, run_id: str, *, tags: Mapping[str, Any] | None = None) -> RunTracker:
        """Continue an existing run (a resumed flow logs into the same MLflow run)."""
        return cls(tracking_uri, "", "", tags=tags, run_id=run_id)

    @staticmethod
    def find_run(tracking_uri: str, experiment: str, run_name: str) -> str | None:
        """The id of the latest run called `run_name` in `experiment`, or None."""
        client = MlflowClient(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        name = run_name.replace("'", "\\'")
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"attributes.run_name = '{name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _experiment_id(self, name: str) -> str:
        location = artifact_location_for(self.tracking_uri)
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:  # another process created it first
                if not _has_code(exc, RESOURCE_ALREADY_EXISTS):
                    raise
                found = self.client.get_experiment_by_name(name)
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        if location is not None and found.artifact_location != location:
            log.warning("experiment %r keeps its artifacts at %s, not %s", name, found.artifact_location, location)
        return found.experiment_id

    # -- params, metrics, tags -------------------------------------------------------------------

    def log_config(self, config: Mapping[str, Any]) -> dict[str, str]:
        """Log the config as dotted params plus the whole YAML under `config/`; returns the new params.

        Params cannot change in MLflow. On a resumed run, params already there with the same value
        are skipped; changed ones keep their first value, are listed in the `dartflow.changed_params`
        tag, and the new YAML is kept next to the first one.
        """
        params = flatten_params(config)
        existing = self.client.get_run(self.run_id).data.params
        new = {key: value for key, value in params.items() if key not in existing}
        changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
        for chunk in _chunks([Param(key, value) for key, value in new.items()], MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        if changed:
            log.warning("config changed on resume (MLflow params keep their first value): %s", changed)
            self.set_tags({CHANGED_PARAMS_TAG: ",".join(changed)})
        yaml_name = "config.yaml" if not existing else f"config.resume-{time.strftime('%Y%m%dT%H%M%S')}.yaml"
        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.client.log_text(self.run_id, text, f"{CONFIG_ARTIFACT_DIR}/{yaml_name}")
        return new

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> int:
        """Log metrics at `step` (the policy version) in batches; returns how many were logged.

        NaN and ±inf are skipped (SQL stores cannot hold inf; MLflow would write ±1.8e308) and counted
        per key in `nonfinite_counts`, written to the run's `dartflow.nonfinite_metrics` tag at `end()`.
        """
        timestamp = int(time.time() * 1000)
        batch: list[Metric] = []
        skipped: list[str] = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {key!r} is not a number: {value!r}") from None
            if math.isfinite(number):
                batch.append(Metric(key, number, timestamp, int(step)))
            else:
                skipped.append(key)
        if skipped:
            with self._lock:
                self.nonfinite_counts.update(skipped)
        for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
        return len(batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(key, value) for key, value in _tag_dict(tags).items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    # -- artifacts ---------------------------------------------------------------------------------

    def log_checkpoint(self, checkpoint_dir: str | Path, version: int) -> str:
        """Copy a checkpoint folder to the run's artifacts under `checkpoints/v{version:06d}`."""
        artifact_path = f"checkpoints/v{version:06d}"
        self.client.log_artifacts(self.run_id, str(checkpoint_dir), artifact_path)
        return artifact_path

    def log_figure(self, figure: Any, name: str) -> str:
        """Save a matplotlib figure as `plots/<name>.png` (logging it again under a name replaces it)."""
        artifact_file = f"plots/{name}" if name.endswith((".png", ".svg", ".pdf")) else f"plots/{name}.png"
        self.client.log_figure(self.run_id, figure, artifact_file)
        return artifact_file

    def log_table(self, table: Any, artifact_file: str) -> str:
        """Save an Arrow table as a parquet artifact (e.g. `curation/problems.parquet`); replaces an earlier one."""
        import tempfile

        import pyarrow.parquet as pq

        folder, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            pq.write_table(table, path)
            self.client.log_artifact(self.run_id, str(path), folder or None)
        return artifact_file

    def log_text(self, text: str, artifact_file: str) -> str:
        self.client.log_text(self.run_id, text, artifact_file)
        return artifact_file

    def log_policy_and_register(
        self,
        model_dir: str | Path,
        model_name: str,
        alias: str = "candidate",
        *,
        version: int | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> int:
        """Log an HF model folder with MLflow's transformers flavor, register it, point `alias` at it.

        The folder is copied as is (no model load, no network): the logged model holds it under
        `model/`, so `download_policy(...)` gives back a folder `from_pretrained` and vLLM can load.
        `version` (the policy version) links the run's metrics at that step to the logged model.
        Returns the registered model version.
        """
        import mlflow.transformers
        from huggingface_hub import ModelCard

        # An absolute path is never a valid hub repo id, so MLflow's model-card and license lookups
        # fail fast instead of going to the network.
        source = str(Path(model_dir).resolve())
        card = ModelCard(
            f"---\nlibrary_name: transformers\ntags: [dartflow]\n---\n# {model_name}\n\n"
            f"Policy trained by dartflow, MLflow run `{self.run_id}`.\n"
        )
        # Created here, in the run's experiment: left to log_model, it would land in the *active*
        # experiment (Default, artifacts in `./mlruns/0` of whatever cwd created the db).
        logged = self.client.create_logged_model(
            self.experiment_id,
            name=POLICY_ARTIFACT_NAME,
            source_run_id=self.run_id,
            params=self.client.get_run(self.run_id).data.params,
            model_type="dartflow-policy",
        )
        # Both calls read MLflow's global tracking URI: log_model to write the logged model, and
        # create_model_version to resolve `models:/m-...` (MLflow's own TODO in its registry store).
        with _global_tracking_uri(self.tracking_uri):
            info = mlflow.transformers.log_model(
                source,
                name=POLICY_ARTIFACT_NAME,
                model_id=logged.model_id,
                task="text-generation",
                run_id=self.run_id,
                step=version or 0,
                model_card=card,
                pip_requirements=_policy_requirements(),
            )
            try:
                self.client.create_registered_model(model_name)
            except MlflowException as exc:
                if not _has_code(exc, RESOURCE_ALREADY_EXISTS):
                    raise
            model_version = self.client.create_model_version(
                model_name, info.model_uri, run_id=self.run_id, tags=_tag_dict(tags or {}), model_id=info.model_id
            )
        self.client.set_registered_model_alias(model_name, alias, model_version.version)
        return int(model_version.version)

    # -- reading back ------------------------------------------------------------------------------

    def metric_history(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, by step: what the plots take."""
        history = sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: (m.step, m.timestamp))
        return [m.step for m in history], [m.value for m in history]

    def latest_metrics(self) -> dict[str, float]:
        return dict(self.client.get_run(self.run_id).data.metrics)

    def run_url(self, ui_base: str = "http://127.0.0.1:5000") -> str:
        return f"{ui_base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # -- ending ------------------------------------------------------------------------------------

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED (once; later calls do nothing)."""
        RunStatus.from_string(status)  # raises on a typo
        if self._ended:
            return
        if self.nonfinite_counts:
            self.set_tags({NONFINITE_TAG: json.dumps(dict(sorted(self.nonfinite_counts.items())))})
        self.client.set_terminated(self.run_id, status=status)
        self._ended = True

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)) or exc_type.__name__ == "CancelledError":
            self.end("KILLED")
        else:
            self.end("FAILED")


def _tag_dict(tags: Mapping[str, Any]) -> dict[str, str]:
    return {_fit_key(str(key)): _fit_value(str(value), MAX_TAG_VAL_LENGTH) for key, value in tags.items()}


def _policy_requirements() -> list[str]:
    # Passed explicitly: MLflow's default list pins torchvision, which is not installed here (and
    # its inference would fail); local version labels (+cpu) are not installable from PyPI.
    reqs = []
    for package in ("torch", "transformers", "safetensors", "tokenizers"):
        try:
            reqs.append(f"{package}=={metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pass
    return reqs


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous, previous_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is not None:  # set_tracking_uri(None) clears the variable
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


# -- the registry, for flows that only know names -------------------------------------------------


def registered_version(tracking_uri: str, model_name: str, alias: str) -> int | None:
    """The model version `alias` points at, or None when the model or the alias does not exist."""
    try:
        return int(MlflowClient(tracking_uri).get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        # A missing model is RESOURCE_DOES_NOT_EXIST; a missing alias, INVALID_PARAMETER_VALUE.
        if _has_code(exc, RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE):
            return None
        raise


def set_model_alias(tracking_uri: str, model_name: str, alias: str, version: int) -> None:
    """Point `alias` (e.g. `champion`) at a version; the alias moves off any other version."""
    MlflowClient(tracking_uri).set_registered_model_alias(model_name, alias, str(version))


def download_policy(tracking_uri: str, model_name: str, alias: str, dst_dir: str | Path) -> Path | None:
    """Download the policy `alias` points at into `dst_dir`; returns its HF folder, or None if no alias."""
    version = registered_version(tracking_uri, model_name, alias)
    if version is None:
        return None
    # Resolved to the version's storage location here: a `models:/` URI would be looked up in the
    # global registry, whatever `tracking_uri` says.
    source = MlflowClient(tracking_uri).get_model_version_download_uri(model_name, str(version))
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst_dir))
    return Path(local) / POLICY_SUBDIR


def model_version_url(model_name: str, version: int, ui_base: str = "http://127.0.0.1:5000") -> str:
    return f"{ui_base.rstrip('/')}/#/models/{model_name}/versions/{version}"


# -- for Prefect artifacts (plain strings in, markdown out; no Prefect import) -----------------------


def run_link_markdown(run_id: str, run_url: str, *, experiment: str | None = None) -> str:
    """Markdown for the Prefect flow run's link to its MLflow run."""
    where = f" in experiment `{experiment}`" if experiment else ""
    return f"### MLflow run\n\n[`{run_id}`]({run_url}){where}\n"


def summary_rows(metrics: Mapping[str, float], extra: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
    """Rows {"name", "value"} for a Prefect table artifact summarising a run (metrics sorted by name)."""
    rows = [{"name": str(key), "value": str(value)} for key, value in (extra or {}).items()]
    rows += [{"name": key, "value": f"{value:.6g}"} for key, value in sorted(metrics.items())]
    return rows

