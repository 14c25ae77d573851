import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from dartflow.storage import TrajectoryRecord, TurnRecord, records_to_table
from dartflow.storage.schema import TRAJECTORY_SCHEMA
from dartflow.tasks.curation.pool import (
    choose_pooled,
    groups_without_success,
    plan_injections,
    pool_candidates,
    pooled_copy,
)


def batch() -> pa.Table:
    return pa.table(
        {
            "trajectory_id": ["a1", "b1", "a2", "c1", "b2", "d1"],
            "group_id": ["ga", "gb", "ga", "gc", "gb", "gd"],
            "environment": ["e", "e", "e", "e", "e", "f"],
            "problem_id": ["pa", "pb", "pa", "pc", "pb", "pa"],
            "success": [False, True, None, False, False, False],
        }
    )


def trajectory(trajectory_id: str, *, success=True, source="rollout", split="train", problem_id="p", version=3):
    turns = [
        TurnRecord("obs", "act", [1, 2], [7, 8, 9], [-0.1, -0.2, -0.3], min_policy_version=version,
                   max_policy_version=version + 1, reward=1.0)
    ]
    return TrajectoryRecord(
        problem_id=problem_id, group_id="g-old", environment="e", turns=turns, finish_reason="done",
        success=success, run_id="run-old", trajectory_id=trajectory_id, split=split, source=source,
        metadata={"seed": 7},
    )


def test_groups_without_any_success_in_order_of_appearance():
    # ga: False + null, gb: one success, gc: one failure, gd: one failure
    assert groups_without_success(batch()) == ["ga", "gc", "gd"]
    assert groups_without_success(batch().slice(0, 0)) == []


def test_pool_candidates_are_train_successes_of_hard_problems():
    rows = records_to_table(
        [
            trajectory("keep", problem_id="hard"),
            trajectory("fail", problem_id="hard", success=False),
            trajectory("easy", problem_id="easy"),
            trajectory("heldout", problem_id="hard", split="heldout"),
            trajectory("demo", problem_id="hard", source="demonstration"),
            trajectory("copy", problem_id="hard", source="pool"),
        ]
    )
    assert pool_candidates(rows, {"hard"})["trajectory_id"].to_pylist() == ["keep"]
    with_demos = pool_candidates(rows, {("e", "hard")}, sources=("rollout", "demonstration"))
    assert with_demos["trajectory_id"].to_pylist() == ["keep", "demo"]
    assert pool_candidates(rows, {("other-env", "hard")}).num_rows == 0


def test_pooled_copy_keeps_tokens_logprobs_and_versions_and_flags_the_row():
    original = records_to_table([trajectory("orig")])
    at = datetime(2026, 2, 1, tzinfo=UTC)
    copy = pooled_copy(original, "g-new", "new-id", run_id="run-new", created_at=at)
    assert copy.schema == TRAJECTORY_SCHEMA and copy.num_rows == 1
    row, before = copy.to_pylist()[0], original.to_pylist()[0]
    changed = {"trajectory_id", "group_id", "source", "run_id", "created_at", "metadata_json"}
    assert {k: v for k, v in row.items() if k not in changed} == {
        k: v for k, v in before.items() if k not in changed
    }
    assert [row[k] for k in ("trajectory_id", "group_id", "source", "run_id")] == ["new-id", "g-new", "pool", "run-new"]
    assert row["behavior_logprobs"] == [pytest.approx([-0.1, -0.2, -0.3])] and row["min_policy_version"] == 3
    assert json.loads(row["metadata_json"]) == {
        "seed": 7,
        "pooled": True,
        "pooled_from": {"trajectory_id": "orig", "run_id": "run-old", "group_id": "g-old", "source": "rollout"},
    }
    assert original.to_pylist()[0] == before  # the input is not modified
    assert pooled_copy(original, "g", "x")["run_id"].to_pylist() == ["run-old"]


def test_pooled_copy_refuses_failures_copies_and_several_rows():
    with pytest.raises(ValueError, match="not a success"):
        pooled_copy(records_to_table([trajectory("f", success=False)]), "g", "x")
    with pytest.raises(ValueError, match="pooled copy already"):
        pooled_copy(records_to_table([trajectory("c", source="pool")]), "g", "x")
    with pytest.raises(ValueError, match="one row"):
        pooled_copy(records_to_table([trajectory("a"), trajectory("b")]), "g", "x")


def test_injections_pair_each_successless_group_with_a_member_of_its_problem():
    members = pa.table(
        {"trajectory_id": ["m1", "m2", "m3"], "environment": ["e", "e", "f"], "problem_id": ["pa", "pa", "pa"]}
    )
    plan = plan_injections(batch(), members)
    # ga (e/pa) and gd (f/pa) have members; gc (e/pc) has none; gb has a success
    assert [(g, row["trajectory_id"][0].as_py()) for g, row in plan] == [
        ("ga", choose_pooled(members.slice(0, 2), "ga")["trajectory_id"][0].as_py()),
        ("gd", "m3"),
    ]
    assert [g for g, _ in plan_injections(batch(), members, hard_problem_ids={("f", "pa")})] == ["gd"]
    assert plan_injections(batch(), members.slice(0, 0)) == []


def test_choose_pooled_is_stable_and_spreads_over_members():
    members = pa.table({"trajectory_id": [f"m{i}" for i in range(4)]})
    picks = [choose_pooled(members, f"group-{i}")["trajectory_id"][0].as_py() for i in range(40)]
    assert picks == [choose_pooled(members, f"group-{i}")["trajectory_id"][0].as_py() for i in range(40)]
    assert set(picks) == {"m0", "m1", "m2", "m3"}
    with pytest.raises(ValueError, match="no pooled member"):
        choose_pooled(members.slice(0, 0), "g")
