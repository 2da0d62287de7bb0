"""`mdstream scan-splits`: stored daily bars → the split-like jump detector → alerts.

A jump whose price ratio is a simple N:M and whose volume moved with it looks like a split nobody
announced. The scan only raises a SUSPECTED_CORPORATE_ACTION alert: it never writes a factor, so
history stays as announced until a person or a second source confirms the event.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from mdstream.bus.kafka import KafkaAlertPublisher, ensure_topics
from mdstream.core.corporate_actions import SplitSuspicion, detect_split_like_jumps
from mdstream.core.normalise import datetime_to_ns
from mdstream.core.quality.alerts import alert
from mdstream.settings import Settings
from mdstream.storage.history import bars_async
from mdstream.storage.postgres import create_pool


def suspicion_alert(symbol: str, s: SplitSuspicion, at_ns: int) -> dict[str, Any]:
    """One alert per instrument and day: a re-scan raises the same event id again."""
    day_ns = datetime_to_ns(datetime.combine(s.date, datetime.min.time(), UTC))
    return alert(
        "SUSPECTED_CORPORATE_ACTION",
        "MEDIUM",
        "RAISED",
        "split-detector",
        symbol,
        f"{symbol} on {s.date}: {s.reason}; nothing applied",
        at_ns,
        s.date.isoformat(),
        last_update=day_ns,
        observed=s.price_ratio,
        reference=s.new_shares / s.old_shares,
    )


async def scan(
    pool: asyncpg.Pool,
    settings: Settings,
    symbols: list[str],
    start: date,
    end: date,
) -> list[dict[str, Any]]:
    """Detect on each symbol's stored raw daily bars and publish an alert per suspicion."""
    topics = settings.topics
    ensure_topics(settings.bootstrap, [topics.alerts], settings.partitions)
    publish = KafkaAlertPublisher(settings.bootstrap, topics.alerts)
    alerts = []
    for symbol in symbols:
        daily = await bars_async(pool, symbol, start, end, "1d")
        for suspicion in detect_split_like_jumps(daily):
            record = suspicion_alert(symbol, suspicion, time.time_ns())
            await publish(record)
            alerts.append(record)
    return alerts


async def _main(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    pool = await create_pool(args.dsn or settings.postgres_dsn, schema=args.schema, read_only=True)
    try:
        alerts = await scan(pool, settings, args.symbols.split(","), args.start, args.end)
    finally:
        await pool.close()
    for a in alerts:
        print(f"{a['instrument']}: {a['description']}")
    print(f"{len(alerts)} suspected corporate action(s) alerted on {settings.topics.alerts}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "scan-splits", help="alert on split-like jumps in stored daily bars (applies nothing)"
    )
    p.add_argument("--symbols", required=True, help="comma-separated")
    p.add_argument("--start", required=True, type=date.fromisoformat)
    p.add_argument("--end", required=True, type=date.fromisoformat)
    p.add_argument("--dsn", help="PostgreSQL DSN (default: MDSTREAM_POSTGRES_DSN / local)")
    p.add_argument("--schema", help="PostgreSQL schema")
    p.set_defaults(func=lambda args: asyncio.run(_main(args)))
