"""Storage lifecycle benchmark on the local services: archive, replay, tiered reads, lifecycle.

    python -m benchmarks.storage [--seconds N] [--rate-scale X] [--instruments N] [--years Y]
        [--skip archive,replay,history,lifecycle]

Starts Kafka, PostgreSQL and s3proxy through `mdstream.services.ensure_up` (point
MDSTREAM_RUN_DIR and the MDSTREAM_*_PORT variables at a stack of your own). Every phase uses its
own topic or schema and cleans its schema up.

1. archive: a generated feed is published first; the clock runs while the archiver writes it
   to Parquet objects + manifests on s3proxy (ticks/s, messages/s, objects).
2. replay: the archive read back through the manifests, each object verified (ticks/s), and
   into a new raw topic (ticks/s).
3. history: one instrument-year of 1 min bars (390 a session), all but the last weeks moved
   to the cold tier by the lifecycle; `history.bars` over the year, p50/p99 of 20 reads.
4. lifecycle: 10 years × 500 instruments of daily bars (2016-2025); one lifecycle run as of
   2026-01-20 (every yearly partition ended > 7 days ago → S3) and one two years later (the
   objects past the 10-year retention deleted).

A script that prints numbers, not a test: the machine is shared, figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import numpy as np

from mdstream.bus.kafka import ensure_topics, publish
from mdstream.core.contracts import ContractSet
from mdstream.core.simulate import FeedSpec, generate
from mdstream.services import ensure_up
from mdstream.storage import bars as bar_store
from mdstream.storage import history
from mdstream.storage.archive import Archiver
from mdstream.storage.lifecycle import run_lifecycle
from mdstream.storage.objectstore import ObjectStore
from mdstream.storage.postgres import create_pool, drop_schema
from mdstream.storage.replay import ReplayStats, iter_archive, replay_to_topic


def _archive_and_replay(bootstrap: str, store: ObjectStore, args: argparse.Namespace) -> None:
    contracts = ContractSet.load()
    topic = f"bench-archive-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, [topic], 4)
    feed = list(generate(FeedSpec(duration_s=args.seconds, rate_scale=args.rate_scale)))
    ticks = sum(m.n_ticks for m in feed)
    publish(bootstrap, topic, feed, contracts)
    idle = 1.0
    started = time.perf_counter()
    stats = Archiver(bootstrap, [topic], store, max_messages=5000).run(until_idle_s=idle)
    seconds = time.perf_counter() - started - idle
    print(f"archive: {stats.messages} messages, {ticks} ticks, {stats.objects} objects in "
          f"{seconds:.2f}s → {ticks / seconds:,.0f} ticks/s, {stats.messages / seconds:,.0f} "
          f"messages/s")  # fmt: skip
    if "replay" in args.skip:
        return
    rstats = ReplayStats()
    started = time.perf_counter()
    n = sum(1 for _ in iter_archive(store, topic, stats=rstats))
    seconds = time.perf_counter() - started
    print(f"replay (read + verify): {n} messages, {rstats.ticks} ticks in {seconds:.2f}s → "
          f"{rstats.ticks / seconds:,.0f} ticks/s")  # fmt: skip
    target = f"{topic}-replayed"
    ensure_topics(bootstrap, [target], 4)
    started = time.perf_counter()
    sent = replay_to_topic(bootstrap, target, iter_archive(store, topic))
    seconds = time.perf_counter() - started
    print(f"replay → raw topic: {sent} messages in {seconds:.2f}s → {ticks / seconds:,.0f} "
          f"ticks/s")  # fmt: skip


def _bar(symbol: str, start: datetime, width: timedelta, price: float) -> tuple:
    return (symbol, start, start + width, price, price * 1.001, price * 0.999, price, 1e4,
            price, 10, 0, None, ["alpaca"])  # fmt: skip


def _sessions(first: date, last: date) -> list[date]:
    return [d for d in (first + timedelta(n) for n in range((last - first).days + 1))
            if d.weekday() < 5]  # fmt: skip


async def _history(dsn: str, store: ObjectStore) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(dsn, schema=schema)
    try:
        days = _sessions(date(2025, 1, 1), date(2025, 12, 31))
        rows = [
            _bar("BENCH", datetime(d.year, d.month, d.day, 14, 30, tzinfo=UTC)
                 + timedelta(minutes=m), timedelta(minutes=1), 100.0 + m / 100)
            for d in days for m in range(390)
        ]  # fmt: skip
        async with pool.acquire() as conn:
            await bar_store.write_bars(conn, "1m", rows)
            report = await run_lifecycle(conn, store, now=datetime(2026, 1, 5, tzinfo=UTC))
        print(f"history: {len(rows)} 1 min bars, {len(report.moved)} monthly partitions moved "
              f"to S3 ({report.rows_moved} rows), December hot")  # fmt: skip
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            frame = history.bars("BENCH", date(2025, 1, 1), date(2025, 12, 31), "1m", dsn=dsn,
                                 schema=schema)  # fmt: skip
            timings.append(time.perf_counter() - started)
            assert frame.height == len(rows), frame.height
        q = np.percentile(timings, [50, 99])
        print(f"history read across tiers (1 instrument-year of 1 min bars, {len(rows)} rows): "
              f"p50 {q[0] * 1000:.0f} ms, p99 {q[1] * 1000:.0f} ms (n=20)")  # fmt: skip
    finally:
        await pool.close()
        await drop_schema(dsn, schema)


async def _lifecycle(dsn: str, store: ObjectStore, instruments: int, years: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(dsn, schema=schema)
    try:
        last = date(2025, 12, 31)
        days = _sessions(date(last.year - years + 1, 1, 1), last)
        started = time.perf_counter()
        async with pool.acquire() as conn:
            for i in range(instruments):
                rows = [_bar(f"I{i:04d}", datetime(d.year, d.month, d.day, 5, tzinfo=UTC),
                             timedelta(days=1), 50.0 + i) for d in days]  # fmt: skip
                await bar_store.write_bars(conn, "1d", rows)
        print(f"lifecycle: wrote {instruments} × {len(days)} daily bars in "
              f"{time.perf_counter() - started:.1f}s")  # fmt: skip
        async with pool.acquire() as conn:
            first = await run_lifecycle(conn, store, now=datetime(2026, 1, 20, tzinfo=UTC))
            second = await run_lifecycle(conn, store, now=datetime(2028, 1, 20, tzinfo=UTC))
        print(f"lifecycle run (10 y × {instruments} instruments, {instruments * len(days)} "
              f"daily bars): {first.seconds:.1f}s, {len(first.moved)} partitions → S3 "
              f"({first.rows_moved} rows); 2 years later: {second.seconds:.1f}s, "
              f"{len(second.moved)} moved, {len(second.expired)} objects past retention "
              f"deleted")  # fmt: skip
    finally:
        await pool.close()
        await drop_schema(dsn, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="feed seconds to archive")
    parser.add_argument("--rate-scale", type=float, default=2.0)
    parser.add_argument("--instruments", type=int, default=500)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip")
    args = parser.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    endpoints = ensure_up(["kafka", "postgres", "s3proxy"])
    store = ObjectStore()
    if "archive" not in args.skip:
        _archive_and_replay(endpoints.kafka_bootstrap, store, args)
    if "history" not in args.skip:
        asyncio.run(_history(endpoints.postgres_dsn, store))
    if "lifecycle" not in args.skip:
        asyncio.run(_lifecycle(endpoints.postgres_dsn, store, args.instruments, args.years))


if __name__ == "__main__":
    main()
