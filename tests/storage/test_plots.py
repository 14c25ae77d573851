"""Run figures: PNGs from lists, Arrow and polars; the overlap arithmetic by hand."""

import io
from datetime import datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest
from matplotlib.figure import Figure

from dartflow.storage.plots import (
    busy_seconds,
    overlap_seconds,
    reward_success_figure,
    staleness_histogram_figure,
    timeline_figure,
)

INTERVALS = [
    ("rollout", 0.0, 4.0),
    ("rollout", 3.0, 6.0),  # overlaps the first: busy 0-6
    ("training", 2.0, 3.0),
    ("weight_swap", 3.0, 3.5),
    ("training", 5.0, 8.0),
]


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def assert_png(figure: Figure) -> None:
    data = png_bytes(figure)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000


def test_overlap_and_busy_seconds_by_hand():
    assert busy_seconds(INTERVALS, "rollout") == 6.0
    assert busy_seconds(INTERVALS, "training") == 4.0
    # training 2-3 lies inside rollout 0-6 (1 s); training 5-8 overlaps rollout 5-6 (1 s)
    assert overlap_seconds(INTERVALS, "rollout", "training") == 2.0
    assert overlap_seconds(INTERVALS, "training", "rollout") == 2.0
    assert overlap_seconds(INTERVALS, "training", "weight_swap") == 0.0  # they touch, never overlap
    assert overlap_seconds(INTERVALS, "rollout", "evaluation") == 0.0


def test_sync_timeline_has_no_overlap():
    sync = [("rollout", 0, 2), ("training", 2, 3), ("rollout", 3, 5), ("training", 5, 6)]
    assert overlap_seconds(sync, "rollout", "training") == 0.0


def test_timeline_accepts_tuples_dicts_arrow_polars_and_datetimes():
    start = datetime(2025, 1, 1, 12, 0, 0)
    as_dicts = [
        {"kind": kind, "start": start + timedelta(seconds=s), "end": start + timedelta(seconds=e)}
        for kind, s, e in INTERVALS
    ]
    arrow = pa.Table.from_pylist(as_dicts)
    frame = pl.DataFrame(as_dicts)
    for intervals in (INTERVALS, as_dicts, arrow, frame):
        assert overlap_seconds(intervals, "rollout", "training") == pytest.approx(2.0)
    figure = timeline_figure(frame)
    ax = figure.axes[0]
    assert [label.get_text() for label in ax.get_yticklabels()] == ["rollout", "training", "weight_swap"]
    assert "rollout ∥ training 2.0 s (50% of training time)" in ax.get_title()
    assert_png(figure)


def test_reward_success_figure_from_lists_arrow_and_polars():
    versions = pa.chunked_array([[0, 1, 2], [3, 4]])
    reward = pl.Series([0.1, 0.2, None, 0.4, 0.5])  # a missing value is a gap, not a crash
    figure = reward_success_figure(
        versions, reward, reward_std=[0.05] * 5, eval_versions=[0, 2, 4], success=[0.1, 0.3, 0.6], success_before=0.1
    )
    reward_ax, success_ax = figure.axes
    assert list(reward_ax.lines[0].get_xdata()) == [0, 1, 2, 3, 4]
    assert list(success_ax.lines[0].get_ydata()) == [0.1, 0.3, 0.6]
    assert success_ax.get_xlabel() == "policy version"
    assert_png(figure)


def test_staleness_histogram_counts_each_level_and_marks_the_bound():
    figure = staleness_histogram_figure(pa.array([0, 0, 1, 2, 2, 2], pa.int32()), max_staleness=2)
    ax = figure.axes[0]
    assert [patch.get_height() for patch in ax.patches] == [2, 1, 3]
    assert "6 trained trajectories" in ax.get_title()
    assert_png(figure)


def test_empty_inputs_still_draw():
    for figure in (reward_success_figure([], []), staleness_histogram_figure([]), timeline_figure([])):
        assert png_bytes(figure).startswith(b"\x89PNG")
