"""The printed summary of a run.

Every phase's figures in one table, with the conditions they were measured under (load, grace,
commit interval, CPUs), how to read the latency split, and the command that reproduces the run:
on a shared machine a number without these is not worth keeping.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.pipeline.ceiling import Passthrough
from benchmarks.pipeline.harness import COMMIT_INTERVAL_S, GRACE_MS, reproduce_command
from benchmarks.pipeline.latency import Latency
from benchmarks.pipeline.throughput import Throughput


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _p50_p99(values: np.ndarray, what: str) -> str:
    return f"p50 {pct(values, 50):.0f} ms  p99 {pct(values, 99):.0f} ms  {what}"


def report(
    args: argparse.Namespace,
    tp: Throughput | None,
    lat: Latency | None,
    passes: list[Passthrough],
    recomputed: tuple[float, int, int] | None,
) -> None:
    rows: list[tuple[str, str]] = []
    if tp is not None:
        note = " (TIMED OUT: partial)" if tp.timed_out else ""
        bars = ", ".join(f"{n} × {k}" for k, n in sorted(tp.bars.items())) or "0"
        rows += [
            ("1. throughput (1 worker, EOS)", ""),
            (
                "   feed",
                f"{tp.messages} raw msgs, {tp.ticks} ticks ({args.seconds:g}s of feed "
                f"× rate {args.rate_scale:g}), published in {tp.publish_s:.1f}s",
            ),
            ("   worker start → Ready", f"{tp.startup_s:.1f} s"),
            ("   Ready → first commit", f"{tp.first_commit_s:.1f} s"),
            ("   Ready → all committed", f"{tp.wall_s:.1f} s{note}"),
            (
                "   raw messages/s",
                f"{tp.msgs_per_s:,.0f}  (steady 10→90%: {tp.steady_msgs_per_s:,.0f})",
            ),
            ("   ticks/s", f"{tp.ticks_per_s:,.0f}"),
            (
                "   emitted (committed)",
                f"bars {bars}; alerts {tp.alerts}; dead letters {tp.dead_letters}",
            ),
        ]
        if tp.worker_cpu_s is not None and tp.wall_s:
            kafka = (
                f", Kafka JVM {tp.kafka_cpu_s / tp.wall_s:.0%} of a core"
                if tp.kafka_cpu_s is not None
                else ""
            )
            rows.append(
                (
                    "   CPU while processing",
                    f"worker {tp.worker_cpu_s / tp.wall_s:.0%} of a core{kafka}",
                )
            )
    if lat is not None:
        t = lat.total_ms
        rows += [
            ("2. tick → 1s bar latency", ""),
            (
                "   live feed",
                f"{args.live_seconds:g}s at pace 1.0: {lat.live_msgs} msgs, "
                f"{lat.live_ticks} ticks; {lat.bars} bars measured "
                f"({lat.warmup_skipped} in the first {args.warmup:g}s skipped)",
            ),
            (
                "   receive − window_end",
                f"p50 {pct(t, 50):.0f} ms  p99 {pct(t, 99):.0f} ms  "
                f"max {t.max() if len(t) else float('nan'):.0f} ms",
            ),
            (
                "   same − grace",
                f"p50 {pct(t, 50) - GRACE_MS:.0f} ms  "
                f"p99 {pct(t, 99) - GRACE_MS:.0f} ms  "
                f"max {(t.max() if len(t) else float('nan')) - GRACE_MS:.0f} ms",
            ),
            ("   split of (latency − grace):", ""),
            ("   a. feed: closing tick sent", _p50_p99(lat.feed_ms, "after window_end + grace")),
            ("   b. worker: bar emitted", _p50_p99(lat.worker_ms, "after that tick was sent")),
            ("   c. commit + fetch: received", _p50_p99(lat.visible_ms, "after emission")),
        ]
        if abs(lat.start_lag_ms) > 50:
            rows.append(("   (live feed started late by", f"{lat.start_lag_ms:.0f} ms)"))
        if lat.worker_cpu_share is not None:
            rows.append(("   worker CPU at 1× pace", f"{lat.worker_cpu_share:.0%} of a core"))
    if passes or recomputed:
        rows.append(("3. ceiling (same raw messages)", ""))
        for p in passes:
            extra = f", {p.commits} commits" if p.commits else ""
            cpu = f"{p.cpu_s / p.wall_s:.0%} of a core" if p.cpu_s and p.wall_s else "?"
            rows.append(
                (
                    f"   confluent-kafka {p.label}",
                    f"{p.msgs_per_s:,.0f} msgs/s  ({p.passes} passes, {p.messages} in "
                    f"{p.wall_s:.1f}s{extra}; CPU {cpu}; init+join {p.join_s:.1f}s)",
                )
            )
        if recomputed:
            secs, n_out, n_in = recomputed
            if tp is not None and not tp.timed_out:
                streamed = sum(tp.bars.values()) + tp.alerts + tp.dead_letters
                same = "=" if streamed == n_out else "≠ (!)"
                rows.append(
                    (
                        "   outputs check",
                        f"worker committed {streamed} {same} {n_out} recomputed in-process",
                    )
                )
            rows.append(
                (
                    "   processing step in-process",
                    f"{n_in / secs:,.0f} msgs/s  (handle_raw_message alone, dict state, no "
                    f"Kafka/faust/encoding: {n_in} in {secs:.1f}s, {n_out} outputs)",
                )
            )
    width = max(len(k) for k, _ in rows) + 2
    print()
    print("=" * 100)
    print(
        f"mdstream pipeline benchmark — {args.partitions} partitions, rate scale "
        f"{args.rate_scale:g}, grace {GRACE_MS:g} ms, commit interval {COMMIT_INTERVAL_S:g} s, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"load average at start {args.load_before[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
        f"(anything above ~1 means other work shared the {os.cpu_count()} CPUs); "
        f"total run {time.monotonic() - args.t0:.0f} s"
    )
    print("-" * 100)
    for key, value in rows:
        print(f"{key:<{width}}{value}")
    print("-" * 100)
    print("Latency is what a read_committed consumer sees: a 1s bar is final only when its")
    print(f"partition's stream time passes window_end + grace ({GRACE_MS:g} ms, MDSTREAM_GRACE_MS)")
    print("— i.e. when a later tick arrives, after provider latency and batching — and becomes")
    print(
        f"visible only when the worker's transaction commits (every {COMMIT_INTERVAL_S:g} s, "
        "MDSTREAM_COMMIT_INTERVAL)."
    )
    print("So 'receive − window_end' ≥ grace by construction; 'same − grace' is what is added on")
    print("top: (a) the feed (provider latency + batching of the tick that moves stream time past")
    print("the window), (b) the worker (fetch, queueing, processing), (c) the transaction commit")
    print("(up to one commit interval) and the read_committed consumer's fetch; a+b+c ≈ latency −")
    print("grace per bar (percentiles of a sum are not sums of percentiles).")
    print(f"reproduce: {reproduce_command(args.argv)}")
    print("=" * 100)
