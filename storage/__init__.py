"""Arrow schemas, the LanceDB trajectory store, checkpoint store and tracking."""

from dartflow.storage.appender import BatchedAppender
from dartflow.storage.experience_pool import pooled_copy, pooled_trajectory_id
from dartflow.storage.records import TrajectoryRecord, TurnRecord, records_to_table
from dartflow.storage.schema import (
    FINISH_REASONS,
    LIGHT_COLUMNS,
    LINEAGE_SCHEMA,
    POOL_SCHEMA,
    SCHEMA_VERSION,
    SOURCES,
    SPLITS,
    STEP_SELECTION_SCHEMA,
    TRAJECTORY_SCHEMA,
)
from dartflow.storage.stats import problem_stats
from dartflow.storage.trajectory_store import TableVersion, TrajectoryStore
from dartflow.storage.validation import TrajectoryValidationError, validate_trajectories

__all__ = [
    "BatchedAppender",
    "FINISH_REASONS",
    "LIGHT_COLUMNS",
    "LINEAGE_SCHEMA",
    "POOL_SCHEMA",
    "SCHEMA_VERSION",
    "SOURCES",
    "SPLITS",
    "STEP_SELECTION_SCHEMA",
    "TRAJECTORY_SCHEMA",
    "TableVersion",
    "TrajectoryRecord",
    "TrajectoryStore",
    "TrajectoryValidationError",
    "TurnRecord",
    "pooled_copy",
    "pooled_trajectory_id",
    "problem_stats",
    "records_to_table",
    "validate_trajectories",
]
