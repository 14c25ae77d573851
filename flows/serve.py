"""Scheduled retraining: `dartflow serve CONFIG [--cron ...]` serves the retrain flow as a Prefect
deployment.

The deployment's parameter is the whole run config (`config: RunConfig`): Prefect builds the
parameter form of the UI from the pydantic model and validates edited parameters with it, so a
run started by hand is checked exactly like `dartflow train`'s config. Each run of the deployment
(`dartflow-retrain`) trains under a fresh run name (`<run_name>-<UTC time>`) with a seed of its own,
so it draws problems in a new order, starting from the registered `champion` (flows/promotion.py),
and applies the promotion rule at the end; the training itself is the train flow, as a subflow.
A deployment-wide concurrency limit of 1 keeps two runs from training the same model at once.
"""


import os
import zlib
from datetime import datetime, timezone

from prefect import flow

from dartflow.config import RunConfig

DEPLOYMENT_FLOW = "dartflow-retrain"


def retrain_config(config: RunConfig, started: datetime) -> RunConfig:
    """The config one retrain runs with: a fresh run name and seed, from the champion, promotion on."""
    run_name = f"{config.run_name}-{started.strftime('%Y%m%d-%H%M%S')}"
    tracking = config.tracking.model_copy(update={
        "start_from_champion": True,
        "promotion": config.tracking.promotion.model_copy(update={"enabled": True}),
    })
    return config.model_copy(update={
        "run_name": run_name, "seed": zlib.crc32(run_name.encode()) % (2**31), "tracking": tracking,
    })


@flow(name=DEPLOYMENT_FLOW, log_prints=True)
async def retrain(config: RunConfig) -> dict:
    """Retrain the config's model from its champion on new problems; promote it if it wins on held-out."""
    from dartflow.flows.train import build_flow, configure_prefect

    run_config = retrain_config(config, datetime.now(timezone.utc))
    configure_prefect(run_config)
    run_config.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"retrain: run '{run_config.run_name}' from the champion of {run_config.tracking.model_name}")
    return await build_flow()(
        config=run_config.model_dump(mode="json"), run_name=run_config.run_name, mode="async", resume=False
    )


def serve(config: RunConfig, *, cron: str | None, name: str | None = None) -> None:
    """Register the deployment (with the schedule, when given) and run its runs until Ctrl-C."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dartflow.flows.train import configure_prefect

    configure_prefect(config)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        # One API server for the deployment and every run it starts (the runs' processes inherit the
        # URL), on the work dir's Prefect database: `dartflow ui` shows the same runs.
        server = SubprocessASGIServer()
        server.start()
        api_url = server.api_url
    deployment = name or config.run_name
    print(f"dartflow serve: Prefect API {api_url}", flush=True)
    print(
        f"dartflow serve: deployment '{DEPLOYMENT_FLOW}/{deployment}'"
        + (f" on schedule '{cron}'" if cron else " (no schedule: start runs from the UI or `prefect deployment run`)"),
        flush=True,
    )
    os.environ["PREFECT_API_URL"] = api_url
    with temporary_settings({PREFECT_API_URL: api_url}):
        retrain.serve(
            name=deployment,
            cron=cron,
            parameters={"config": config.model_dump(mode="json")},
            global_limit=1,
            limit=1,
            description=f"Retrain {config.tracking.model_name} from its champion; promote it if it wins on held-out.",
            tags=["dartflow", config.tracking.model_name],
        )
