"""Checks that a batch of trajectories fits TRAJECTORY_SCHEMA before it reaches the store.

Every check is a vectorised pyarrow/numpy pass over whole columns: appends stay fast. Only once a
check fails is the first offending row located, so the error can name the column and the row index.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dartflow.storage.schema import (
    FINISH_REASONS,
    PER_TURN_COLUMNS,
    SOURCES,
    SPLITS,
    TRAJECTORY_COLUMNS,
    TRAJECTORY_SCHEMA,
)

_ID_COLUMNS = ("run_id", "trajectory_id", "problem_id", "group_id", "environment")
_ENUM_COLUMNS = {"finish_reason": FINISH_REASONS, "split": SPLITS, "source": SOURCES}
_SECONDS_COLUMNS = ("generation_seconds", "environment_seconds")
_TURN_SECONDS_COLUMNS = ("turn_generation_seconds", "turn_environment_seconds")


class TrajectoryValidationError(ValueError):
    """A batch does not fit the trajectory schema; `column` and `row` say where."""

    def __init__(self, column: str, row: int | None, reason: str):
        self.column, self.row, self.reason = column, row, reason
        where = "schema" if row is None else f"row {row}"
        super().__init__(f"trajectory batch rejected: column {column!r}, {where}: {reason}")


def validate_trajectories(data: pa.Table | pa.RecordBatch) -> pa.Table:
    """Return `data` with TRAJECTORY_SCHEMA (columns reordered, schema metadata set), or raise
    TrajectoryValidationError naming the first bad column and row."""
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    if not isinstance(table, pa.Table):
        raise TypeError(f"expected a pyarrow Table or RecordBatch, got {type(data).__name__}")
    _check_columns(table.schema)
    table = table.select(list(TRAJECTORY_COLUMNS))
    row_offset = 0
    for batch in table.to_batches():
        _check_batch(batch, row_offset)
        row_offset += batch.num_rows
    _check_unique_ids(table.column("trajectory_id"))
    return pa.Table.from_arrays(table.columns, schema=TRAJECTORY_SCHEMA)


def _check_columns(schema: pa.Schema) -> None:
    names = set(schema.names)
    if len(names) != len(schema.names):
        duplicated = next(n for n in schema.names if schema.names.count(n) > 1)
        raise TrajectoryValidationError(duplicated, None, "column appears more than once")
    for field in TRAJECTORY_SCHEMA:
        if field.name not in names:
            raise TrajectoryValidationError(field.name, None, f"missing column ({field.type})")
        got = schema.field(field.name).type
        if got != field.type:
            raise TrajectoryValidationError(
                field.name,
                None,
                f"type {got}, expected {field.type} (build batches with "
                "records_to_table or cast to TRAJECTORY_SCHEMA)",
            )
    extra = sorted(names - set(TRAJECTORY_COLUMNS))
    if extra:
        raise TrajectoryValidationError(extra[0], None, "unknown column (not in TRAJECTORY_SCHEMA)")


def _first(mask: pa.Array | np.ndarray) -> int | None:
    """Index of the first true entry, or None."""
    if isinstance(mask, np.ndarray):
        hits = np.flatnonzero(mask)
        return int(hits[0]) if hits.size else None
    index = pc.index(mask, True).as_py()
    return None if index < 0 else index


def _levels(array: pa.Array) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """For each nesting level of a list array: the flattened values and the row each came from."""
    rows = np.arange(len(array))
    while pa.types.is_list(array.type):
        parents = pc.list_parent_indices(array).to_numpy()
        array = array.flatten()
        rows = rows[parents]
        yield array, rows


def _leaf_rows(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    *_, (values, rows) = _levels(array)
    return values, rows


def _leaf_values(array: pa.Array) -> pa.Array:
    while pa.types.is_list(array.type):
        array = array.flatten()
    return array


def _relative_offsets(array: pa.ListArray) -> np.ndarray:
    offsets = array.offsets.to_numpy()
    return offsets - offsets[0]


def _check_batch(batch: pa.RecordBatch, row_offset: int) -> None:
    col = {name: batch.column(name) for name in TRAJECTORY_COLUMNS}

    def fail(column: str, row: int, reason: str):
        raise TrajectoryValidationError(column, row_offset + int(row), reason)

    for name, array in col.items():
        if array.null_count:
            fail(name, _first(pc.is_null(array)), "null value")
        values = array
        while pa.types.is_list(values.type):
            values = values.flatten()
            if values.null_count:  # only now map entries back to rows
                for values, rows in _levels(array):
                    if values.null_count:
                        fail(name, rows[_first(pc.is_null(values))], "null entry inside the list")

    # Each check is one cheap reduction; the offending row is searched only when it fails.
    for name in _ID_COLUMNS:
        lengths = pc.utf8_length(col[name])
        if len(lengths) and pc.min(lengths).as_py() == 0:
            fail(name, _first(pc.equal(lengths, 0)), "empty string")
    for name, allowed in _ENUM_COLUMNS.items():
        known = pc.is_in(col[name], value_set=pa.array(allowed))
        if not pc.all(known).as_py():
            row = _first(pc.invert(known))
            fail(name, row, f"{col[name][row].as_py()!r} is not one of {allowed}")

    num_turns = col["num_turns"].to_numpy()
    if (row := _first(num_turns < 0)) is not None:
        fail("num_turns", row, f"negative ({num_turns[row]})")
    turn_offsets = np.concatenate([[0], np.cumsum(num_turns, dtype=np.int64)])
    for name in PER_TURN_COLUMNS:
        offsets = _relative_offsets(col[name])
        if not np.array_equal(offsets, turn_offsets):
            lengths = np.diff(offsets)
            row = _first(lengths != num_turns)
            fail(name, row, f"{lengths[row]} turns, but num_turns is {num_turns[row]}")

    _check_tokens(col, fail)
    _check_policy_versions(col, fail)
    _check_floats(col, fail)


def _check_tokens(col: dict[str, pa.Array], fail) -> None:
    responses, logprobs = col["response_token_ids"], col["behavior_logprobs"]
    response_lengths = pc.list_value_length(responses.flatten()).to_numpy()
    logprob_lengths = pc.list_value_length(logprobs.flatten()).to_numpy()
    if (turn := _first(response_lengths != logprob_lengths)) is not None:
        rows = pc.list_parent_indices(responses).to_numpy()
        row = rows[turn]
        fail(
            "behavior_logprobs",
            row,
            f"turn {turn - _relative_offsets(responses)[row]}: {logprob_lengths[turn]} log-probs "
            f"for {response_lengths[turn]} response token ids",
        )

    cumulative = np.concatenate([[0], np.cumsum(response_lengths, dtype=np.int64)])
    turn_offsets = _relative_offsets(responses)
    totals = cumulative[turn_offsets[1:]] - cumulative[turn_offsets[:-1]]
    declared = col["num_response_tokens"].to_numpy()
    if (row := _first(totals != declared)) is not None:
        fail("num_response_tokens", row, f"{declared[row]}, but the turns hold {totals[row]} tokens")

    values = _leaf_values(logprobs)
    bad = pc.or_(pc.invert(pc.is_finite(values)), pc.greater(values, 0))
    if (index := _first(bad)) is not None:
        values, rows = _leaf_rows(logprobs)
        fail(
            "behavior_logprobs", rows[index], f"log-prob {values[index].as_py()} is not finite and <= 0"
        )

    for name in ("prompt_token_ids", "response_token_ids"):
        values = _leaf_values(col[name])
        if len(values) and pc.min(values).as_py() < 0:
            values, rows = _leaf_rows(col[name])
            fail(name, rows[_first(pc.less(values, 0))], "negative token id")


def _check_policy_versions(col: dict[str, pa.Array], fail) -> None:
    lowest, highest = col["min_policy_version"].to_numpy(), col["max_policy_version"].to_numpy()
    if (row := _first(lowest > highest)) is not None:
        fail("min_policy_version", row, f"{lowest[row]} > max_policy_version {highest[row]}")

    turn_min_array = col["turn_min_policy_version"]
    turn_min = turn_min_array.flatten().to_numpy()
    turn_max = col["turn_max_policy_version"].flatten().to_numpy()
    if (turn := _first(turn_min > turn_max)) is not None:
        row = pc.list_parent_indices(turn_min_array).to_numpy()[turn]
        fail(
            "turn_min_policy_version",
            row,
            f"{turn_min[turn]} > turn_max_policy_version {turn_max[turn]}",
        )

    # A row's version range must be its turns' range: staleness is computed from it alone.
    offsets = _relative_offsets(turn_min_array)
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    if nonempty.size:
        starts = offsets[nonempty]
        for name, turn_values, reduce, declared in (
            ("min_policy_version", turn_min, np.minimum, lowest),
            ("max_policy_version", turn_max, np.maximum, highest),
        ):
            expected = reduce.reduceat(turn_values, starts)
            if (i := _first(expected != declared[nonempty])) is not None:
                row = nonempty[i]
                fail(name, row, f"{declared[row]}, but the turns' versions give {expected[i]}")


def _check_floats(col: dict[str, pa.Array], fail) -> None:
    for name in ("reward", *_SECONDS_COLUMNS):
        if (row := _first(pc.is_nan(col[name]))) is not None:
            fail(name, row, "NaN")
    for name in _SECONDS_COLUMNS:
        if (row := _first(pc.less(col[name], 0))) is not None:
            fail(name, row, f"negative duration {col[name][row].as_py()}")
    for name in ("turn_rewards", *_TURN_SECONDS_COLUMNS):
        values = col[name].flatten()
        bad = (
            pc.is_nan(values)
            if name == "turn_rewards"
            else pc.or_(pc.is_nan(values), pc.less(values, 0))
        )
        if (index := _first(bad)) is not None:
            rows = pc.list_parent_indices(col[name]).to_numpy()
            fail(name, rows[index], f"bad value {values[index].as_py()}")


def _check_unique_ids(ids: pa.ChunkedArray) -> None:
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    seen: set[str] = set()
    for row, trajectory_id in enumerate(ids.to_pylist()):  # error path only
        if trajectory_id in seen:
            raise TrajectoryValidationError("trajectory_id", row, f"duplicate id {trajectory_id!r}")
        seen.add(trajectory_id)
