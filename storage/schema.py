"""Arrow schemas of the trajectory store: one row per multi-turn trajectory, one per consumption,
one per pooled success (experience pool), one per trained trajectory's turn selection.

Columns are named after the arguments of the code that consumes them (`behavior_logprobs`,
`min_policy_version`, ...), so nothing is renamed between the store and the loss. Columns whose
name starts with `turn_` (and `observations`, `actions`, the token and log-prob columns) hold one
list entry per turn; their length is `num_turns`.

Bump SCHEMA_VERSION on any change of a column's name, type or meaning: the store refuses to open a
table written under another version instead of reading it wrongly.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = b"dartflow.schema_version"
SCHEMA_NAME_KEY = b"dartflow.schema"

FINISH_REASONS = ("done", "truncated", "error", "interrupted")
SPLITS = ("train", "heldout")
SOURCES = ("rollout", "demonstration", "pool")

_TOKEN_IDS = pa.list_(pa.list_(pa.int32()))


def _field(name: str, type_: pa.DataType, description: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={b"description": description.encode()})


TRAJECTORY_FIELDS = [
    # ids
    _field("run_id", pa.string(), "Run that generated the trajectory."),
    _field("trajectory_id", pa.string(), "Unique id of the trajectory (one episode)."),
    _field("problem_id", pa.string(), "Problem attempted, unique within its environment."),
    _field("group_id", pa.string(), "Group of trajectories sampled together for one problem."),
    _field("environment", pa.string(), "Environment family, e.g. 'guess_number'."),
    _field("split", pa.string(), f"One of {SPLITS}."),
    _field("source", pa.string(), f"One of {SOURCES}."),
    # policy versions: staleness = trainer version - min_policy_version
    _field("min_policy_version", pa.int64(), "Oldest policy version of any token."),
    _field("max_policy_version", pa.int64(), "Newest policy version of any token."),
    # totals
    _field("reward", pa.float64(), "Total reward of the trajectory."),
    _field("success", pa.bool_(), "Whether the problem was solved."),
    _field("num_turns", pa.int32(), "Number of turns; the length of every per-turn list."),
    _field("num_response_tokens", pa.int32(), "Sum of the response token counts of all turns."),
    _field("finish_reason", pa.string(), f"One of {FINISH_REASONS}."),
    _field("generation_seconds", pa.float64(), "Total time spent generating, seconds."),
    _field("environment_seconds", pa.float64(), "Total time spent in environment steps, seconds."),
    _field("created_at", pa.timestamp("us", tz="UTC"), "When the trajectory was written (UTC)."),
    _field("metadata_json", pa.string(), "Free JSON object (difficulty tags, seeds, ...)."),
    # per turn
    _field("observations", pa.list_(pa.string()), "Observation text shown before each turn."),
    _field("actions", pa.list_(pa.string()), "Action text the agent produced at each turn."),
    _field("prompt_token_ids", _TOKEN_IDS, "Prompt token ids of each turn."),
    _field("response_token_ids", _TOKEN_IDS, "Sampled response token ids of each turn."),
    _field(
        "behavior_logprobs",
        pa.list_(pa.list_(pa.float32())),
        "Log-prob of each response token under the rollout (behaviour) policy.",
    ),
    _field(
        "turn_min_policy_version",
        pa.list_(pa.int64()),
        "Oldest policy version within each turn (a live weight swap can split a turn).",
    ),
    _field("turn_max_policy_version", pa.list_(pa.int64()), "Newest policy version within each turn."),
    _field("turn_rewards", pa.list_(pa.float64()), "Reward received after each turn."),
    _field("turn_generation_seconds", pa.list_(pa.float64()), "Generation time of each turn."),
    _field("turn_environment_seconds", pa.list_(pa.float64()), "Environment step time of each turn."),
]

TRAJECTORY_SCHEMA = pa.schema(
    TRAJECTORY_FIELDS,
    metadata={SCHEMA_NAME_KEY: b"trajectories", SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

TRAJECTORY_COLUMNS = tuple(TRAJECTORY_SCHEMA.names)
PER_TURN_COLUMNS = tuple(f.name for f in TRAJECTORY_FIELDS if pa.types.is_list(f.type))
# Scalar columns: cheap to scan at 1M rows; what a curation predicate chooses rows from.
LIGHT_COLUMNS = tuple(f.name for f in TRAJECTORY_FIELDS if not pa.types.is_list(f.type))

LINEAGE_SCHEMA = pa.schema(
    [
        _field("run_id", pa.string(), "Run of the trainer; null for a store without run id.", True),
        _field("trainer_version", pa.int64(), "Policy version the batch trained (the step's input)."),
        _field("position", pa.int32(), "Row position of the trajectory inside the batch."),
        _field("trajectory_id", pa.string(), "Trajectory consumed."),
        _field("min_policy_version", pa.int64(), "Copied from the trajectory: bounds lookups."),
        _field("trajectories_version", pa.int64(), "Trajectories table version when recorded."),
        _field("consumed_at", pa.timestamp("us", tz="UTC"), "When the consumption was recorded."),
    ],
    metadata={SCHEMA_NAME_KEY: b"lineage", SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

# Experience pool: successful trajectories kept per hard problem, each a full trajectory row (so a
# pooled success can join a batch with its own tokens and behaviour log-probs) plus whose pool it is.
POOL_FIELDS = [
    _field("pool_run_id", pa.string(), "Run whose pool holds the row; null for a store without run id.", True),
    _field("pooled_at", pa.timestamp("us", tz="UTC"), "When the trajectory entered the pool."),
    *TRAJECTORY_FIELDS,
]
POOL_SCHEMA = pa.schema(
    POOL_FIELDS,
    metadata={SCHEMA_NAME_KEY: b"experience_pool", SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

# Which turns of each trajectory trained a version (high-entropy step selection), with every turn's
# mean token entropy, so a reader can check the kept turns against the ones left out.
STEP_SELECTION_SCHEMA = pa.schema(
    [
        _field("run_id", pa.string(), "Run of the trainer; null for a store without run id.", True),
        _field("trainer_version", pa.int64(), "Policy version the batch trained (the step's input)."),
        _field("position", pa.int32(), "Order of the trajectory in the recorded selection."),
        _field("trajectory_id", pa.string(), "Trajectory whose turns were selected."),
        _field("kept_turns", pa.list_(pa.int32()), "Indices of the turns that trained, ascending."),
        _field("turn_entropies", pa.list_(pa.float32()), "Mean token entropy of every turn (num_turns)."),
        _field("recorded_at", pa.timestamp("us", tz="UTC"), "When the selection was recorded."),
    ],
    metadata={SCHEMA_NAME_KEY: b"step_selection", SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
