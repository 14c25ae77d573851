"""Benchmark of the trajectory store: append throughput vs raw Parquet, next-batch latency at scale.

    .venv/bin/python benchmarks/store.py            # full run, writes benchmarks/reports/store.md
    .venv/bin/python benchmarks/store.py --quick    # smoke run (seconds), benchmarks/out/store-quick.md

1. Append: the same Arrow batches of realistic trajectories (1-8 turns, 30-200 response tokens a
   turn, a prompt of 200-400 tokens growing with the conversation, English-like text) go through
   TrajectoryStore.append (validation + LanceDB commit) and through pyarrow.parquet.write_table
   (one file per batch), alternating rounds. Building the batches is not timed.
2. Next batch: a store of N rows where a trainer at version V asks for 64 trajectories with
   staleness <= 4 while everything older than V-2 was already consumed (64 rows per policy
   version, so the lineage table holds ~N rows too). The bulk is built with light synthetic rows
   (one turn of 4 tokens, big appends, then compact()); the admissible window (versions V-2..V)
   is 3 appends of 64 realistic rows, left unindexed as between two compactions, then measured
   again after compact().
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dartflow.storage import BatchedAppender, TrajectoryStore, records_to_table
from dartflow.storage.synthetic import light_trajectory_table, synthetic_records

from store_report import commit_label, machine, render

REPORT = Path(__file__).parent / "reports" / "store.md"
QUICK_REPORT = Path(__file__).parent / "out" / "store-quick.md"  # git-ignored
ROWS_PER_VERSION = 64
BATCH, STALENESS = 64, 4


# ---- 1. append throughput ------------------------------------------------------------------------


def time_store_appends(
    batches: list[pa.Table], warm_up: pa.Table, folder: Path, buffer_rows: int
) -> float:
    store = TrajectoryStore(str(folder), run_id="bench", compact_every_appends=0)
    store.append(warm_up)
    appender = BatchedAppender(store, min_rows=buffer_rows, max_seconds=None) if buffer_rows else None
    start = time.perf_counter()
    for batch in batches:
        appender.add(batch) if appender else store.append(batch)
    if appender:
        appender.flush()
    return time.perf_counter() - start


def time_parquet_writes(
    batches: list[pa.Table], warm_up: pa.Table, folder: Path, buffer_rows: int
) -> float:
    folder.mkdir(parents=True)
    pq.write_table(warm_up, folder / "warm-up.parquet")
    start = time.perf_counter()
    buffered: list[pa.Table] = []
    for index, batch in enumerate(batches):
        buffered.append(batch)
        if sum(b.num_rows for b in buffered) >= buffer_rows or index == len(batches) - 1:
            pq.write_table(pa.concat_tables(buffered), folder / f"part-{index:05d}.parquet")
            buffered = []
    return time.perf_counter() - start


def bench_append(
    out: Path, batch_size: int, num_batches: int, rounds: int, buffer_rows: int = 0
) -> dict:
    rng = np.random.default_rng(batch_size)
    build_start = time.perf_counter()
    batches = [
        records_to_table(synthetic_records(batch_size, rng=rng, policy_version=i, run_id="bench"))
        for i in range(num_batches)
    ]
    build_seconds = time.perf_counter() - build_start
    warm_up = records_to_table(synthetic_records(batch_size, rng=rng, run_id="bench"))
    rows = batch_size * num_batches
    store_times, parquet_times = [], []
    for round_ in range(rounds):
        folder = out / f"append-b{batch_size}-r{round_}"
        runs = [("store", time_store_appends), ("parquet", time_parquet_writes)]
        for name, run in runs if round_ % 2 == 0 else runs[::-1]:
            seconds = run(batches, warm_up, folder / name, buffer_rows)
            (store_times if name == "store" else parquet_times).append(seconds)
        compact_store = TrajectoryStore(str(folder / "store"), compact_every_appends=0)
        start = time.perf_counter()
        compact_store.compact()
        compact_seconds = time.perf_counter() - start
        shutil.rmtree(folder)
    store_rps, parquet_rps = (
        rows / statistics.median(store_times),
        rows / statistics.median(parquet_times),
    )
    return {
        "batch_size": batch_size,
        "buffer_rows": buffer_rows,
        "batches": num_batches,
        "rounds": rounds,
        "mb_per_batch": sum(b.nbytes for b in batches) / num_batches / 1e6,
        "build_ms_per_batch": build_seconds / num_batches * 1e3,
        "store_rows_s": store_rps,
        "parquet_rows_s": parquet_rps,
        "ratio": store_rps / parquet_rps,
        "compact_s": compact_seconds,
    }


# ---- 2. next-batch latency -----------------------------------------------------------------------


def build_scenario(folder: Path, total_rows: int, chunk: int) -> tuple[TrajectoryStore, int, float]:
    """A store of `total_rows` rows whose trainer is at version V (see the module docstring)."""
    store = TrajectoryStore(str(folder), run_id="bench", compact_every_appends=0)
    bulk_rows = total_rows - 3 * ROWS_PER_VERSION
    trainer_version = -(-bulk_rows // ROWS_PER_VERSION) + 2  # the bulk ends at version V-3
    start = time.perf_counter()
    for first in range(0, bulk_rows, chunk):
        versions = np.arange(first, min(first + chunk, bulk_rows)) // ROWS_PER_VERSION
        table = light_trajectory_table(versions, run_id="bench", id_prefix=f"bulk{first}-", seed=first)
        store.append(table)
        store.record_consumption(int(versions[-1]) + 2, table)  # consumed long ago
    store.compact()
    rng = np.random.default_rng(0)
    for policy_version in range(trainer_version - 2, trainer_version + 1):
        store.append(
            synthetic_records(ROWS_PER_VERSION, rng=rng, policy_version=policy_version, run_id="bench")
        )
    return store, trainer_version, time.perf_counter() - start


def latency_ms(call, repeats: int) -> tuple[float, float]:
    call()  # warm caches, as a trainer polling in a loop would
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def bench_next_batch(out: Path, total_rows: int, repeats: int) -> dict:
    store, version, build_seconds = build_scenario(
        out / f"scale-{total_rows}", total_rows, chunk=100_000
    )
    batch = store.next_batch(version, STALENESS, BATCH)
    assert batch.num_rows == BATCH and set(batch["min_policy_version"].to_pylist()) == {version - 2}, (
        "scenario broken"
    )
    result = {
        "rows": store.count(),
        "lineage_rows": total_rows - 3 * ROWS_PER_VERSION,
        "build_s": build_seconds,
    }
    result["next_batch_ms"] = latency_ms(lambda: store.next_batch(version, STALENESS, BATCH), repeats)
    result["phase1_ms"] = latency_ms(lambda: store.admissible(version, STALENESS), repeats)
    start = time.perf_counter()
    store.compact()
    result["compact_s"] = time.perf_counter() - start
    result["next_batch_compacted_ms"] = latency_ms(
        lambda: store.next_batch(version, STALENESS, BATCH), repeats
    )
    result["problem_stats_ms"] = latency_ms(
        lambda: store.problem_stats(run_id="bench"), max(3, repeats // 5)
    )
    start = time.perf_counter()
    store.record_consumption(version, batch["trajectory_id"].to_pylist())
    result["record_consumption_ms"] = (time.perf_counter() - start) * 1e3
    shutil.rmtree(out / f"scale-{total_rows}")
    return result


# ---- 3. compaction as the table grows --------------------------------------------------------------


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def bench_compaction_growth(out: Path, batch_size: int, appends: int, every: int) -> list[dict]:
    """Append realistic batches, compact() every `every` appends; Lance rewrites every fragment
    under 1M rows, so each compaction costs about the size of the table (and, with all versions
    kept for time travel, the old copies stay on disk)."""
    folder = out / "growth"
    store = TrajectoryStore(str(folder), run_id="bench", compact_every_appends=0)
    rng = np.random.default_rng(1)
    pool = [records_to_table(synthetic_records(batch_size, rng=rng, run_id="bench")) for _ in range(4)]
    rows = []
    for index in range(appends):
        batch = pool[index % len(pool)]
        ids = pa.array([f"g{index}-{i}" for i in range(batch.num_rows)])
        store.append(
            batch.set_column(batch.schema.get_field_index("trajectory_id"), "trajectory_id", ids)
        )
        if (index + 1) % every == 0:
            start = time.perf_counter()
            store.compact()
            rows.append(
                {
                    "rows": store.count(),
                    "compact_s": time.perf_counter() - start,
                    "disk_mb": folder_mb(folder),
                }
            )
    store.compact(prune_older_than=timedelta(milliseconds=1))
    rows[-1]["disk_mb_pruned"] = folder_mb(folder)
    shutil.rmtree(folder)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, help="work directory (default: a temporary one, removed)")
    parser.add_argument(
        "--report", type=Path, help=f"markdown report (default: {REPORT}; with --quick: {QUICK_REPORT})"
    )
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="dartflow-store-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    report = args.report or (QUICK_REPORT if args.quick else REPORT)
    command = shlex.join(["python", "benchmarks/store.py", *(sys.argv[1:] if argv is None else argv)])
    # (rows per writer call, calls, rounds, rows buffered per commit: 0 = one append per call)
    sizes = (
        [(16, 4, 1, 0), (64, 3, 1, 0), (16, 8, 1, 64)]
        if args.quick
        else [(16, 60, 3, 0), (64, 30, 3, 0), (256, 12, 3, 0), (16, 120, 3, 64)]
    )
    scales = [2_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000]
    growth_setup = (16, 8, 4) if args.quick else (64, 256, 32)  # batch size, appends, compact every
    load_before = os.getloadavg()
    try:
        appends = []
        for batch_size, num_batches, rounds, buffer_rows in sizes:
            appends.append(bench_append(out, batch_size, num_batches, rounds, buffer_rows))
            a = appends[-1]
            print(
                f"append {batch_size} rows per call, {commit_label(a)} per commit: store "
                f"{a['store_rows_s']:,.0f} rows/s, parquet {a['parquet_rows_s']:,.0f} rows/s, "
                f"ratio {a['ratio']:.2f}",
                flush=True,
            )
        results = []
        for total in scales:
            results.append(bench_next_batch(out, total, repeats=5 if args.quick else 30))
            r = results[-1]
            print(
                f"next_batch at {r['rows']:,} rows: median {r['next_batch_ms'][0]:.1f} ms "
                f"(p90 {r['next_batch_ms'][1]:.1f}), "
                f"ratio to the 100 ms target {r['next_batch_ms'][0] / 100:.2f}; "
                f"after compact {r['next_batch_compacted_ms'][0]:.1f} ms",
                flush=True,
            )
        growth = bench_compaction_growth(out, *growth_setup)
        for g in growth:
            print(
                f"compact() at {g['rows']:,} rows: {g['compact_s']:.2f} s, disk {g['disk_mb']:.0f} MB",
                flush=True,
            )
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    info = {
        **machine(),
        "load average (1 min) before / after": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
    }
    scenario = {"batch": BATCH, "staleness": STALENESS, "rows_per_version": ROWS_PER_VERSION}
    report.write_text(
        render(info, command, appends, results, growth, growth_setup, scenario, args.quick)
    )
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
