"""Schema, records builder and validation: hand-made good and bad batches."""

import math

import pyarrow as pa
import pytest

from dartflow.storage import (
    SCHEMA_VERSION,
    TRAJECTORY_SCHEMA,
    TrajectoryRecord,
    TrajectoryValidationError,
    TurnRecord,
    records_to_table,
    validate_trajectories,
)
from dartflow.storage.schema import LIGHT_COLUMNS, PER_TURN_COLUMNS, SCHEMA_VERSION_KEY

from store_helpers import realistic_table, small_record, small_table


def with_row_changed(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(
        index, table.schema.field(column), pa.array(values, table.schema.field(column).type)
    )


def rejected(table: pa.Table) -> TrajectoryValidationError:
    with pytest.raises(TrajectoryValidationError) as caught:
        validate_trajectories(table)
    return caught.value


def test_schema_is_versioned_in_its_metadata():
    assert TRAJECTORY_SCHEMA.metadata[SCHEMA_VERSION_KEY] == str(SCHEMA_VERSION).encode()
    assert set(LIGHT_COLUMNS).isdisjoint(PER_TURN_COLUMNS)
    assert {"behavior_logprobs", "min_policy_version", "turn_min_policy_version"} <= set(
        TRAJECTORY_SCHEMA.names
    )


def test_records_builder_derives_totals_from_turns():
    turns = [
        TurnRecord("o1", "a1", [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], 7, None, 0.5, 1.0, 0.25),
        TurnRecord("o2", "a2", [1, 2, 3, 4, 5], [6], [-1.0], 7, 8, 1.5, 2.0, 0.5),
    ]
    table = records_to_table(
        [TrajectoryRecord("p", "g", "env", turns, "done", run_id="r", trajectory_id="x")]
    )
    row = validate_trajectories(table).to_pylist()[0]
    assert row["num_turns"] == 2
    assert row["num_response_tokens"] == 4
    assert (row["min_policy_version"], row["max_policy_version"]) == (7, 8)
    assert row["turn_max_policy_version"] == [7, 8]
    assert row["reward"] == 2.0
    assert (row["generation_seconds"], row["environment_seconds"]) == (3.0, 0.75)
    assert row["behavior_logprobs"][0] == pytest.approx([-0.1, -0.2, -0.3])
    assert row["created_at"].tzinfo is not None
    assert row["metadata_json"] == "{}"


def test_records_builder_accepts_dicts_and_fills_run_id():
    record = {
        "problem_id": "p",
        "group_id": "g",
        "environment": "env",
        "finish_reason": "error",
        "turns": [
            {
                "observation": "o",
                "action": "a",
                "prompt_token_ids": [1],
                "response_token_ids": [2],
                "behavior_logprobs": [-0.5],
                "min_policy_version": 3,
            }
        ],
    }
    table = validate_trajectories(records_to_table([record], run_id="run-x"))
    assert table["run_id"].to_pylist() == ["run-x"]


def test_zero_turn_trajectory_needs_explicit_versions():
    with pytest.raises(ValueError, match="policy versions must be given"):
        records_to_table([TrajectoryRecord("p", "g", "env", [], "error", run_id="r")])
    table = records_to_table(
        [
            TrajectoryRecord(
                "p", "g", "env", [], "error", run_id="r", min_policy_version=2, max_policy_version=2
            )
        ]
    )
    assert validate_trajectories(table)["num_turns"].to_pylist() == [0]


def test_realistic_batch_passes_and_gets_the_canonical_schema():
    table = realistic_table(16)
    shuffled = table.select(list(reversed(table.column_names)))
    validated = validate_trajectories(shuffled)
    assert validated.schema.equals(TRAJECTORY_SCHEMA, check_metadata=True)
    assert validated.num_rows == 16


@pytest.mark.parametrize(
    "change, column",
    [
        (lambda t: t.drop_columns(["reward"]), "reward"),
        (lambda t: t.append_column("advantages", pa.array([0.0] * t.num_rows)), "advantages"),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("response_token_ids"),
                "response_token_ids",
                t["response_token_ids"].cast(pa.list_(pa.list_(pa.int64()))),
            ),
            "response_token_ids",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("num_turns"), "num_turns", t["num_turns"].cast(pa.int64())
            ),
            "num_turns",
        ),
    ],
    ids=["missing", "extra", "wrong-list-type", "wrong-scalar-type"],
)
def test_wrong_schema_is_rejected_naming_the_column(change, column):
    error = rejected(change(small_table([0, 0, 0])))
    assert error.column == column and error.row is None
    assert column in str(error)


def test_per_turn_list_shorter_than_num_turns_names_the_row():
    table = small_table([0, 0, 0, 0], turns=2)
    error = rejected(with_row_changed(table, "observations", 2, ["only one"]))
    assert (error.column, error.row) == ("observations", 2)
    assert "1 turns, but num_turns is 2" in str(error)


def test_fewer_logprobs_than_response_tokens_names_the_row_and_turn():
    table = small_table([0, 0, 0], turns=2)
    error = rejected(with_row_changed(table, "behavior_logprobs", 1, [[-0.5, -0.25], [-0.5]]))
    assert (error.column, error.row) == ("behavior_logprobs", 1)
    assert "turn 1" in str(error) and "1 log-probs for 2 response token ids" in str(error)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.5])
def test_nan_infinite_or_positive_logprob_is_rejected(bad):
    table = small_table([0, 0, 0])
    error = rejected(with_row_changed(table, "behavior_logprobs", 2, [[-0.5, bad]]))
    assert (error.column, error.row) == ("behavior_logprobs", 2)


def test_unknown_finish_reason_is_rejected():
    error = rejected(with_row_changed(small_table([0, 0, 0]), "finish_reason", 1, "timeout"))
    assert (error.column, error.row) == ("finish_reason", 1)
    assert "'timeout' is not one of" in str(error)


@pytest.mark.parametrize(
    "column, value, reason",
    [
        ("split", "test", "not one of"),
        ("source", "scraped", "not one of"),
        ("trajectory_id", None, "null value"),
        ("problem_id", "", "empty string"),
        ("num_response_tokens", 3, "the turns hold 2 tokens"),
        ("min_policy_version", 1, "> max_policy_version"),
        ("max_policy_version", 9, "the turns' versions give 0"),
        ("reward", math.nan, "NaN"),
        ("generation_seconds", -1.0, "negative duration"),
        ("response_token_ids", [[4, -5]], "negative token id"),
        ("turn_rewards", [None], "null entry inside the list"),
        ("turn_max_policy_version", [-1], "turn_max_policy_version -1"),
    ],
)
def test_inconsistent_row_is_rejected_with_column_and_row(column, value, reason):
    error = rejected(with_row_changed(small_table([0, 0, 0, 0]), column, 3, value))
    assert error.row == 3
    assert reason in str(error)


def test_duplicate_trajectory_id_is_rejected():
    table = records_to_table(
        [small_record("same", 0), small_record("other", 0), small_record("same", 0)]
    )
    error = rejected(table)
    assert (error.column, error.row) == ("trajectory_id", 2)


def test_row_index_counts_across_record_batches():
    first, second = small_table([0, 0, 0], prefix="a"), small_table([0, 0], prefix="b")
    second = with_row_changed(second, "finish_reason", 1, "exploded")
    combined = pa.Table.from_batches(first.to_batches() + second.to_batches())
    assert combined.num_columns == first.num_columns and len(combined.to_batches()) == 2
    assert rejected(combined).row == 4


def test_sliced_batch_validates_against_its_own_rows():
    table = realistic_table(12)
    assert validate_trajectories(table.slice(5, 4)).num_rows == 4
