from datetime import datetime, timezone

import polars as pl
import pyarrow as pa
import pytest

from dartflow.storage.stats import problem_stats
from dartflow.tasks.curation.difficulty import (
    counted_attempts,
    estimate_difficulty,
    problem_frame,
    with_untried,
)
from dartflow.tasks.envs.protocol import Problem


def stats(*counts: tuple[int, int]) -> pl.DataFrame:
    """One problem per (attempts, successes), ids p0, p1, ..."""
    return pl.DataFrame(
        {
            "environment": ["g"] * len(counts),
            "problem_id": [f"p{i}" for i in range(len(counts))],
            "attempts": [a for a, _ in counts],
            "successes": [s for _, s in counts],
        }
    )


def test_posterior_is_beta_mean_and_difficulty_its_complement():
    frame = estimate_difficulty(stats((4, 3)), prior_alpha=1, prior_beta=1)
    assert frame["posterior_success"][0] == pytest.approx(4 / 6)
    assert frame["difficulty"][0] == pytest.approx(2 / 6)
    frame = estimate_difficulty(stats((5, 1)), prior_alpha=2, prior_beta=3)
    assert frame["posterior_success"][0] == pytest.approx(3 / 10)  # (1 + 2) / (5 + 2 + 3)
    assert frame["difficulty"][0] == pytest.approx(7 / 10)


def test_buckets_follow_the_posterior_thresholds_edges_included():
    # Beta(1,1): posterior = (s + 1) / (n + 2)
    counts = [(8, 0), (8, 1), (3, 1), (8, 3), (4, 2), (8, 5), (8, 7), (8, 8), (0, 0)]
    # p:      0.1    0.2     0.4     0.4     0.5     0.6     0.8     0.9     prior 0.5
    frame = estimate_difficulty(stats(*counts))
    assert frame["bucket"].cast(pl.String).to_list() == [
        "hopeless", "hard", "hard", "hard", "medium", "easy", "easy", "solved", "unknown"
    ]


def test_few_attempts_never_reach_the_extreme_buckets():
    frame = estimate_difficulty(stats((1, 0), (1, 1), (7, 0), (7, 7)))
    assert frame["bucket"].cast(pl.String).to_list() == ["hard", "easy", "hard", "easy"]


def test_untried_problem_is_unknown_at_the_prior_mean_not_easy():
    frame = estimate_difficulty(stats((0, 0)), prior_alpha=1, prior_beta=3)
    assert frame["unknown"].to_list() == [True]
    assert frame["posterior_success"][0] == pytest.approx(0.25)
    assert frame["bucket"].cast(pl.String)[0] == "unknown"


def test_null_counts_read_as_no_attempt():
    frame = estimate_difficulty(
        pl.DataFrame({"attempts": [None], "successes": [None]}, schema={"attempts": pl.Int64, "successes": pl.Int64})
    )
    assert frame["unknown"][0] and frame["posterior_success"][0] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["prior_alpha", "prior_beta"])
def test_non_positive_prior_is_rejected_by_name(name):
    with pytest.raises(ValueError, match=name):
        estimate_difficulty(stats((1, 1)), **{name: 0.0})


def test_with_untried_keeps_every_candidate_in_order_and_marks_new_ones_unknown():
    candidates = pl.DataFrame({"environment": ["g", "g", "g"], "problem_id": ["c", "a", "b"]})
    measured = pl.DataFrame(
        {"environment": ["g", "h"], "problem_id": ["a", "c"], "attempts": [4, 10], "successes": [4, 0]}
    )
    frame = estimate_difficulty(with_untried(candidates, measured))
    assert frame["problem_id"].to_list() == ["c", "a", "b"]
    assert frame["attempts"].to_list() == [0, 4, 0]  # h/c is another environment's problem
    assert frame["unknown"].to_list() == [True, False, True]
    assert frame["bucket"].cast(pl.String).to_list() == ["unknown", "easy", "unknown"]


def test_with_untried_needs_the_key_columns():
    with pytest.raises(ValueError, match="environment"):
        with_untried(pl.DataFrame({"problem_id": ["a"]}), stats((1, 1)))


def test_problem_frame_carries_level_and_own_turn_bound():
    problems = [
        Problem("g/train/0", "g", "train", difficulty=3.0, max_turns=5),
        Problem("g/train/1", "g", "train", difficulty=1.0),
    ]
    frame = problem_frame(problems)
    assert frame.rows() == [("g", "g/train/0", 3.0, 5), ("g", "g/train/1", 1.0, None)]
    assert problem_frame([]).columns == frame.columns


def _rows(entries):
    """(problem_id, success, max_policy_version, source, finish_reason) -> trajectory rows."""
    at = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return pa.table(
        {
            "environment": ["g"] * len(entries),
            "problem_id": [e[0] for e in entries],
            "success": [e[1] for e in entries],
            "reward": [float(e[1]) for e in entries],
            "max_policy_version": pa.array([e[2] for e in entries], pa.int64()),
            "source": [e[3] for e in entries],
            "finish_reason": [e[4] for e in entries],
            "created_at": pa.array([at] * len(entries), pa.timestamp("us", tz="UTC")),
        }
    )


def test_only_the_policys_own_finished_attempts_count():
    rows = _rows(
        [
            ("a", False, 1, "rollout", "done"),
            ("a", True, 1, "demonstration", "done"),
            ("a", True, 2, "pool", "done"),
            ("a", False, 2, "rollout", "error"),
            ("a", False, 2, "rollout", "interrupted"),
            ("a", True, 2, "rollout", "truncated"),
        ]
    )
    counts = problem_stats(counted_attempts(rows))
    assert counts.select("attempts", "successes").rows() == [(2, 1)]


def test_recency_window_keeps_the_last_versions_only():
    rows = _rows(
        [("a", False, v, "rollout", "done") for v in (1, 2, 3)]
        + [("a", True, v, "rollout", "done") for v in (4, 5)]
        + [("b", False, 1, "rollout", "done")]
    )
    recent = counted_attempts(rows, current_version=5, recent_versions=2)  # versions 4 and 5
    assert problem_stats(recent).select("problem_id", "attempts", "successes").rows() == [("a", 2, 2)]
    assert counted_attempts(rows).height == 6
    # b's only attempt fell out of the window: it is unknown again, not hopeless.
    candidates = pl.DataFrame({"environment": ["g", "g"], "problem_id": ["a", "b"]})
    frame = estimate_difficulty(with_untried(candidates, problem_stats(recent)))
    assert frame["posterior_success"].to_list() == pytest.approx([3 / 4, 1 / 2])
    assert frame["unknown"].to_list() == [False, True]


def test_recency_window_needs_the_current_version():
    with pytest.raises(ValueError, match="current_version"):
        counted_attempts(_rows([("a", True, 1, "rollout", "done")]), recent_versions=2)
    with pytest.raises(ValueError, match="recent_versions"):
        counted_attempts(_rows([("a", True, 1, "rollout", "done")]), current_version=1, recent_versions=0)


def test_before_any_trajectory_every_candidate_is_unknown():
    empty = counted_attempts(_rows([]), current_version=0, recent_versions=3)
    problems = [Problem(f"g/train/{i}", "g", "train", difficulty=1.0) for i in range(3)]
    frame = estimate_difficulty(with_untried(problem_frame(problems), problem_stats(empty)))
    assert frame["unknown"].to_list() == [True] * 3
    assert frame["attempts"].to_list() == [0] * 3
    assert frame["bucket"].cast(pl.String).to_list() == ["unknown"] * 3
