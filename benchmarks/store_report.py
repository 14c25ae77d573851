"""Markdown report of benchmarks/store.py: the machine, a summary against the targets, the tables."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0
    )
    return {
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "RAM": f"{mem_kb / 2**20:.1f} GiB",
        "OS": platform.platform(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("lancedb", "pyarrow", "polars", "numpy", "dartflow")},
    }


def md_row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    return [md_row(*header), md_row(*["---"] * len(header)), *[md_row(*r) for r in rows]]


def commit_label(a: dict) -> str:
    return f"{a['buffer_rows']} (BatchedAppender)" if a["buffer_rows"] else str(a["batch_size"])


def summary(appends: list[dict], scales: list[dict]) -> list[str]:
    lines = []
    for a in appends:
        verdict = "met" if a["ratio"] >= 0.8 else "MISSED"
        lines.append(
            f"- append >= 0.8 x raw Parquet, {a['batch_size']} rows per call, {commit_label(a)} rows "
            f"per commit: {verdict} ({a['ratio']:.2f})"
        )
    for s in scales:
        median = s["next_batch_ms"][0]
        verdict = "met" if median <= 100 else "MISSED"
        lines.append(f"- next_batch <= 100 ms at {s['rows']:,} rows: {verdict} ({median:.1f} ms median)")
    return lines


def render(
    info: dict,
    command: str,
    appends: list[dict],
    scales: list[dict],
    growth: list[dict],
    growth_setup: tuple[int, int, int],
    scenario: dict[str, int],
    quick: bool,
) -> str:
    """`scenario`: batch, staleness, rows_per_version of the next-batch measurement."""
    ms = "{0[0]:.1f} / {0[1]:.1f}".format
    lines = [
        "# Trajectory store benchmark" + (" (quick smoke run: not representative)" if quick else ""),
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
        "",
        *md_table(["machine", ""], [[k, v] for k, v in info.items()]),
        "",
        "## Summary",
        "",
        *summary(appends, scales),
        "",
        "## Append: TrajectoryStore.append vs raw pyarrow Parquet (same Arrow batches)",
        "",
        "Realistic trajectories (see `dartflow.storage.synthetic.synthetic_records`). Store = validation",
        "+ LanceDB append (durable once it returns), no compaction during the run. Parquet = one",
        "`pq.write_table` file per commit (buffered the same way when the store buffers). Median over",
        "alternating rounds. 'compact() after' = compacting the store those appends built.",
        "",
        *md_table(
            [
                "rows per call",
                "rows per commit",
                "calls x rounds",
                "MB/call",
                "store rows/s",
                "parquet rows/s",
                "ratio (target >= 0.8)",
                "compact() after, s",
                "build batch (records_to_table), ms",
            ],
            [
                [
                    a["batch_size"],
                    commit_label(a),
                    f"{a['batches']} x {a['rounds']}",
                    f"{a['mb_per_batch']:.2f}",
                    f"{a['store_rows_s']:,.0f}",
                    f"{a['parquet_rows_s']:,.0f}",
                    f"**{a['ratio']:.2f}**",
                    f"{a['compact_s']:.2f}",
                    f"{a['build_ms_per_batch']:.1f}",
                ]
                for a in appends
            ],
        ),
        "",
        f"## Next training batch: {scenario['batch']} rows, staleness <= {scenario['staleness']}, "
        "older rows consumed",
        "",
        f"{scenario['rows_per_version']} rows per policy version; trainer at the newest version V;",
        "every row older than V-2 is in the lineage table (consumed). Bulk = light synthetic rows",
        "(1 turn, 4 tokens)",
        "loaded in 100k-row appends and compacted; window V-2..V = 3 appends of 64 realistic rows,",
        "unindexed. Latency: median / p90 in ms over repeated calls after one warm-up call. The bulk",
        "is already one indexed fragment, so the compact() measured here only merges the tail appends.",
        "",
        *md_table(
            [
                "rows",
                "lineage rows",
                "next_batch (target <= 100 ms)",
                "phase 1 only (candidate scan)",
                "next_batch after compact()",
                "compact(), s",
                "problem_stats",
                "record_consumption",
                "build, s",
            ],
            [
                [
                    f"{s['rows']:,}",
                    f"{s['lineage_rows']:,}",
                    f"**{ms(s['next_batch_ms'])}**",
                    ms(s["phase1_ms"]),
                    ms(s["next_batch_compacted_ms"]),
                    f"{s['compact_s']:.2f}",
                    ms(s["problem_stats_ms"]),
                    f"{s['record_consumption_ms']:.1f}",
                    f"{s['build_s']:.1f}",
                ]
                for s in scales
            ],
        ),
        "",
        "## Compaction cost as the table grows (all versions kept)",
        "",
        f"Appends of {growth_setup[0]} realistic rows, compact() after every {growth_setup[2]} appends.",
        "LanceDB 0.40 rewrites every fragment under 1M rows, so one compaction costs about the whole",
        "table, and the replaced files stay on disk while old versions are kept for time travel.",
        "Last line: disk after `compact(prune_older_than=timedelta(milliseconds=1))`.",
        "",
        *md_table(
            ["rows", "compact(), s", "disk, MB"],
            [[f"{g['rows']:,}", f"{g['compact_s']:.2f}", f"{g['disk_mb']:.0f}"] for g in growth]
            + [["(pruned)", "", f"{growth[-1]['disk_mb_pruned']:.0f}"]],
        ),
    ]
    return "\n".join(lines) + "\n"
