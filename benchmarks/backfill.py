"""Backfill throughput into a real Kafka: CSV, Parquet and Databento DBN → raw topic.

    python -m benchmarks.backfill [--ticks N] [--dbn-copies K] [--batch-size B]

Starts Kafka only (`ensure_up(only=["kafka"])`; point MDSTREAM_RUN_DIR / MDSTREAM_KAFKA_PORT at a
stack of your own). Each run backfills into fresh topics (2 partitions) through the same engine
as `mdstream backfill` (chunking, progress file, deterministic ids, flush per chunk) and prints
records/s from the first fetch to the last flush, and the file-loading time separately.

- CSV / Parquet: N generated trades over 8 symbols and 6.5 hours, 1-hour chunks.
- Databento: the real ESU4 mbp-1 sample (2,288 records) from ../shared/data, read K times (as K
  files), 15-minute chunks; skipped when the data is absent.

A script that prints numbers, not a test: the machine is shared, figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from mdstream.bus.kafka import ensure_topics
from mdstream.ingest.backfill import Job, KafkaOutput, Progress, TargetTopics, run_backfill
from mdstream.ingest.files import DatabentoFileSource, TableFileSource
from mdstream.services import ensure_up

START = datetime(2024, 7, 1, 13, 30, tzinfo=UTC)
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "JPM", "SPY", "QQQ")
DBN = "futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.dbn.zst"


def generate(n: int, directory: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    span_ns = int(6.5 * 3600e9)
    frame = pl.DataFrame(
        {
            "symbol": rng.choice(list(SYMBOLS), n),
            "timestamp": (int(START.timestamp() * 1e9) + np.sort(rng.integers(0, span_ns, n))),
            "price": np.round(rng.uniform(100, 500, n), 2),
            "volume": rng.integers(1, 1000, n).astype(np.float64),
        }
    )
    csv, parquet = directory / "ticks.csv", directory / "ticks.parquet"
    frame.write_csv(csv)
    frame.write_parquet(parquet)
    return csv, parquet


async def one_run(name, source, symbols, start, end, bootstrap, batch, tmp) -> None:
    prefix = f"bench-bf-{uuid.uuid4().hex[:8]}"
    topics = TargetTopics(f"{prefix}.raw.ticks", f"{prefix}.raw.bars", f"{prefix}.deadletter")
    ensure_topics(bootstrap, topics.all(), 2)
    t0 = time.monotonic()
    await source.fetch(symbols[0], start, start + timedelta(seconds=1), "tick")  # load the files
    load_s = time.monotonic() - t0
    job = Job(source.provider, tuple(symbols), start, end, "tick", prefix)
    summary = await run_backfill(
        source,
        job,
        KafkaOutput(bootstrap, topics),
        Progress(tmp / f"{prefix}.json", job, batch),
        topics,
        bar_stream=None,
    )
    print(
        f"{name:<10} {summary.ticks:>9,} ticks in {summary.messages:>6,} messages, "
        f"{summary.chunks:>3} chunks: {summary.seconds:6.2f} s → {summary.records_per_s:>9,.0f} "
        f"records/s (file load {load_s:.2f} s)"
    )


async def main_async(args: argparse.Namespace) -> None:
    bootstrap = ensure_up(only=["kafka"]).kafka_bootstrap
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        csv, parquet = generate(args.ticks, tmp)
        end = START + timedelta(hours=6, minutes=30)
        for name, path in (("csv", csv), ("parquet", parquet)):
            source = TableFileSource([path], provider=name, max_span=timedelta(hours=1))
            await one_run(name, source, SYMBOLS, START, end, bootstrap, args.batch_size, tmp)
        shared = Path(os.environ.get("MDSTREAM_SHARED_DATA", "../shared/data")) / "databento"
        dbn = shared / DBN
        if not dbn.exists():
            print(f"databento  skipped: {dbn} absent")
            return
        copies = []
        for i in range(args.dbn_copies):
            copy = tmp / f"copy{i}-{DBN}"
            copy.write_bytes(dbn.read_bytes())
            copies.append(copy)
        source = DatabentoFileSource(copies, max_span=timedelta(minutes=15))
        start = datetime(2024, 7, 1, 23, 45, tzinfo=UTC)
        await one_run(
            "databento",
            source,
            ("ESU4",),
            start,
            start + timedelta(minutes=30),
            bootstrap,
            args.batch_size,
            tmp,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--dbn-copies", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
