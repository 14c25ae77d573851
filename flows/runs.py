"""`dartflow runs`: the recent runs of a work dir, from MLflow (versions, held-out success, promotion)
and Prefect (the state of each run's flow run, through the tag the MLflow run carries)."""

from __future__ import annotations

from typing import Any

from dartflow.config import RunConfig

COLUMNS = ("run", "started (UTC)", "prefect", "mlflow", "version", "heldout", "promotion", "mlflow run id")


def recent_runs(config: RunConfig, limit: int = 10) -> list[dict[str, Any]]:
    """One row per MLflow run of the config's experiment, newest first."""
    from datetime import datetime, timezone

    from mlflow.tracking import MlflowClient

    client = MlflowClient(config.mlflow_uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)
    states = prefect_states([r.data.tags.get("prefect.flow_run_id") for r in runs])
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        flow_run_id = tags.get("prefect.flow_run_id")
        version = metrics.get("train/version")
        heldout = metrics.get("eval/heldout_success")
        rows.append({
            "run": tags.get("dartflow.run_name", run.info.run_name),
            "started (UTC)": datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "prefect": states.get(flow_run_id, "-") if flow_run_id else "-",
            "mlflow": run.info.status,
            "version": "-" if version is None else str(int(version)),
            "heldout": "-" if heldout is None else f"{heldout:.3f}",
            "promotion": tags.get("dartflow.promotion", "-"),
            "mlflow run id": run.info.run_id,
        })
    return rows


def prefect_states(flow_run_ids: list[str | None]) -> dict[str, str]:
    """Flow run id -> state name; empty when Prefect cannot be reached (the MLflow side still lists)."""
    import asyncio
    import uuid

    from prefect.client.orchestration import get_client

    async def read() -> dict[str, str]:
        found = {}
        async with get_client() as client:
            for flow_run_id in filter(None, flow_run_ids):
                try:
                    flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
                except Exception:  # deleted, or from another Prefect database
                    continue
                found[flow_run_id] = flow_run.state.name if flow_run.state else "?"
        return found

    try:
        return asyncio.run(read())
    except Exception as error:
        print(f"dartflow runs: Prefect not reachable ({error}); its states are left out")
        return {}


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)
