"""Figures of a run, for MLflow artifacts: pure functions from plain values to matplotlib figures.

Inputs are lists, numpy arrays, Arrow arrays/columns or polars Series (interval tables may be lists
of tuples or mappings, an Arrow table or a polars DataFrame). Figures are built with
`matplotlib.figure.Figure` and the Agg canvas, never pyplot: nothing global, nothing to close, safe
from any thread, and no display needed.

    tracker.log_figure(reward_success_figure(*tracker.metric_history("rollout/reward_mean")), "reward")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Interval = tuple[str, float, float]

KIND_ORDER = ("rollout", "training", "weight_swap")
KIND_COLORS = {"rollout": "tab:blue", "training": "tab:orange", "weight_swap": "tab:red", "evaluation": "tab:green"}


def _array(values: Any) -> np.ndarray:
    """Lists, numpy, Arrow (Array/ChunkedArray) or polars Series -> float numpy array; nulls -> NaN."""
    if values is None:
        return np.empty(0)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    elif hasattr(values, "to_numpy"):  # polars / pandas
        values = values.to_numpy()
    elif not isinstance(values, np.ndarray):
        values = [np.nan if value is None else value for value in values]
    return np.asarray(values, dtype=float)


def _new_figure(rows: int = 1, height: float = 3.2) -> tuple[Figure, Any]:
    figure = Figure(figsize=(8, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, axes


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="gray")


def reward_success_figure(
    versions: Any,
    reward: Any,
    *,
    reward_std: Any = None,
    eval_versions: Any = None,
    success: Any = None,
    success_before: float | None = None,
    title: str = "Reward and held-out success",
) -> Figure:
    """Mean reward (±std band if given) and held-out success rate against policy version."""
    versions, reward = _array(versions), _array(reward)
    figure, (ax_reward, ax_success) = _new_figure(rows=2)
    if len(versions):
        ax_reward.plot(versions, reward, marker=".", color="tab:blue", label="reward (mean)")
        if reward_std is not None:
            std = _array(reward_std)
            ax_reward.fill_between(versions, reward - std, reward + std, color="tab:blue", alpha=0.2, label="±1 std")
        ax_reward.legend(loc="best")
    else:
        _no_data(ax_reward, "reward")
    ax_reward.set_ylabel("reward")
    ax_reward.grid(alpha=0.3)

    eval_versions, success = _array(eval_versions), _array(success)
    if len(eval_versions):
        ax_success.plot(eval_versions, success, marker="o", color="tab:green", label="held-out success")
        if success_before is not None:
            ax_success.axhline(success_before, color="gray", linestyle="--", label="before training")
        ax_success.legend(loc="best")
    else:
        _no_data(ax_success, "held-out evaluation")
    ax_success.set_ylim(-0.02, 1.02)
    ax_success.set_ylabel("success rate")
    ax_success.set_xlabel("policy version")
    ax_success.grid(alpha=0.3)
    figure.suptitle(title)
    return figure


def staleness_histogram_figure(staleness: Any, *, max_staleness: int | None = None) -> Figure:
    """How many trained trajectories had each staleness (trainer version - generating version)."""
    values = _array(staleness)
    values = values[~np.isnan(values)].astype(int)
    figure, (ax,) = _new_figure()
    if len(values):
        levels, counts = np.unique(values, return_counts=True)
        ax.bar(levels, counts, width=0.8, color="tab:purple")
        ax.set_xticks(np.arange(levels.min(), levels.max() + 1))
        ax.set_title(f"Staleness of {len(values)} trained trajectories (mean {values.mean():.2f})")
    else:
        _no_data(ax, "trained trajectories")
        ax.set_title("Staleness")
    if max_staleness is not None:
        right = max(max_staleness, int(values.max()) if len(values) else 0) + 0.9
        ax.set_xlim(min(values.min(), 0) - 0.6 if len(values) else -0.6, right)
        ax.axvline(max_staleness + 0.5, color="red", linestyle="--", label=f"bound = {max_staleness}")
        ax.legend(loc="best")
    ax.set_xlabel("staleness (versions)")
    ax.set_ylabel("trajectories")
    ax.grid(alpha=0.3, axis="y")
    return figure


def success_by_bucket_figure(buckets: Sequence[str], successes: Any, attempts: Any, *, order: Sequence[str]) -> Figure:
    """Measured success rate (all attempts of the problems in a bucket) and problem count per difficulty bucket."""
    names = [str(b) for b in buckets]
    successes, attempts = _array(successes), _array(attempts)
    figure, (ax,) = _new_figure()
    shown = [b for b in order if b in names]
    if not shown:
        _no_data(ax, "planned problems")
    for x, bucket in enumerate(shown):
        members = np.array([n == bucket for n in names])
        tried = attempts[members].sum()
        rate = successes[members].sum() / tried if tried else 0.0
        ax.bar(x, rate, width=0.7, color="tab:green")
        ax.text(x, rate, f"{int(members.sum())} problems\n{int(tried)} attempts", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(shown)), shown)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("difficulty bucket (curation's latest plan)")
    ax.set_ylabel("success rate")
    ax.set_title("Success by difficulty bucket")
    ax.grid(alpha=0.3, axis="y")
    return figure


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _intervals(intervals: Any) -> list[Interval]:
    """(kind, start, end) tuples from tuples, mappings, an Arrow table or a polars DataFrame."""
    if hasattr(intervals, "to_pylist"):  # Arrow table
        intervals = intervals.to_pylist()
    elif hasattr(intervals, "iter_rows"):  # polars DataFrame
        intervals = intervals.iter_rows(named=True)
    rows = []
    for item in intervals:
        kind, start, end = (item["kind"], item["start"], item["end"]) if isinstance(item, Mapping) else item
        rows.append((str(kind), _seconds(start), _seconds(end)))
    return rows


def _union(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def busy_seconds(intervals: Any, kind: str) -> float:
    """Time during which at least one interval of `kind` was running (overlaps counted once)."""
    return sum(end - start for start, end in _union((s, e) for k, s, e in _intervals(intervals) if k == kind))


def overlap_seconds(intervals: Any, kind_a: str, kind_b: str) -> float:
    """Time during which `kind_a` and `kind_b` both ran: what asynchrony buys over a sync loop."""
    rows = _intervals(intervals)
    spans_a = _union((s, e) for k, s, e in rows if k == kind_a)
    spans_b = _union((s, e) for k, s, e in rows if k == kind_b)
    total, i, j = 0.0, 0, 0
    while i < len(spans_a) and j < len(spans_b):  # sweep two sorted, disjoint span lists
        start, end = max(spans_a[i][0], spans_b[j][0]), min(spans_a[i][1], spans_b[j][1])
        total += max(0.0, end - start)
        if spans_a[i][1] < spans_b[j][1]:
            i += 1
        else:
            j += 1
    return total


def timeline_figure(intervals: Any, *, kinds: Sequence[str] | None = None, title: str = "Timeline") -> Figure:
    """Gantt chart, one lane per kind (rollout, training, weight_swap, ...), time from the first start.

    The title states how long rollout and training overlapped, as a share of training's busy time.
    """
    rows = _intervals(intervals)
    lanes = list(kinds) if kinds is not None else _lane_order(rows)
    figure, (ax,) = _new_figure(height=0.6 * max(len(lanes), 1) + 1.6)
    if not rows:
        _no_data(ax, "activity")
        ax.set_title(title)
        return figure
    origin = min(start for _, start, _ in rows)
    for lane, kind in enumerate(lanes):
        spans = [(start - origin, end - start) for k, start, end in rows if k == kind]
        ax.broken_barh(spans, (lane - 0.4, 0.8), color=KIND_COLORS.get(kind, f"C{lane}"), alpha=0.8)
    ax.set_yticks(range(len(lanes)), labels=lanes)
    ax.set_ylim(len(lanes) - 0.5, -0.5)  # first lane on top
    ax.set_xlabel("seconds since start")
    ax.grid(alpha=0.3, axis="x")
    training = busy_seconds(rows, "training")
    if training > 0:
        overlap = overlap_seconds(rows, "rollout", "training")
        title = f"{title} — rollout ∥ training {overlap:.1f} s ({overlap / training:.0%} of training time)"
    ax.set_title(title)
    return figure


def _lane_order(rows: list[Interval]) -> list[str]:
    seen = list(dict.fromkeys(kind for kind, _, _ in rows))
    return [k for k in KIND_ORDER if k in seen] + [k for k in seen if k not in KIND_ORDER]
