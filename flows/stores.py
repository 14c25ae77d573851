"""Opening a run's stores from its config (one place, so every process opens them alike)."""

from __future__ import annotations

from datetime import timedelta

from dartflow.config import RunConfig


def open_trajectory_store(config: RunConfig, run_id: str | None = None, *, compacts: bool = True):
    """The run's trajectory store. Only one process should compact (`compacts=True`): compactions of
    several writers race, and each rewrites the table."""
    from dartflow.storage import TrajectoryStore

    keep = config.storage.keep_versions_hours
    return TrajectoryStore(
        config.store_uri,
        run_id=run_id,
        compact_every_appends=config.storage.compact_every_appends if compacts else 0,
        prune_versions_older_than=None if keep is None else timedelta(hours=keep),
    )
