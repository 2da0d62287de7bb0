"""Retention and tiers of the bar tables, applied by whole partitions (never a row DELETE).

Tiers (the spec's "compress after 7 days", without TimescaleDB, whose compression is not
Apache-2.0 anyway):

- **hot**: the PostgreSQL partitions of ``bars_<freq>`` (a day for 1 s, a month for 1 min, a
  year for 1 h and 1 d; see :mod:`mdstream.storage.bars`);
- **cold**: once a partition ended more than :data:`WARM_AFTER` (7 days) ago, the lifecycle
  rewrites it as one zstd Parquet object ``tiers/<schema>/bars_<freq>/<start>.parquet`` on S3
  (about 5-10× smaller than the heap rows), records it in ``bar_tiers`` and detaches and drops
  the partition in the same transaction. There is no separate compressed-in-PostgreSQL warm
  form: the Parquet object is the compact form.

Retention (:data:`RETENTION`): a hot partition or a cold object whose whole span ended before
``now - retention`` is dropped (the object deleted, its ``bar_tiers`` row marked dropped). The
1 h bars keep the 1 min period. :func:`read_tiered_bars` reads a range across both tiers as one
frame; :mod:`mdstream.history` uses it. The clock is a parameter (tests inject it).

A crash between the put and the PostgreSQL commit leaves the object without its ``bar_tiers``
row; the next run finds the object (same key), checks its row count and keeps it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import polars as pl

from mdstream.storage.bars import _READ_SCHEMA, FREQUENCIES, partition_bounds
from mdstream.storage.objectstore import ObjectExists, ObjectStore

__all__ = [
    "RETENTION",
    "WARM_AFTER",
    "LifecycleReport",
    "hot_partitions",
    "plan",
    "read_tiered_bars",
    "run_lifecycle",
]

RETENTION: dict[str, timedelta] = {
    "1s": timedelta(days=30),
    "1m": timedelta(days=730),
    "1h": timedelta(days=730),
    "1d": timedelta(days=3652),
}
WARM_AFTER = timedelta(days=7)


#: What a cold object keeps: every stored column readers or lineage use.
_COLD_SCHEMA = {**_READ_SCHEMA, "event_id": pl.String(), "sources": pl.List(pl.String())}


@dataclass
class LifecycleReport:
    moved: list[str] = field(default_factory=list)  # partitions rewritten to S3
    dropped: list[str] = field(default_factory=list)  # hot partitions past retention
    expired: list[str] = field(default_factory=list)  # cold objects past retention
    rows_moved: int = 0
    seconds: float = 0.0


def plan(
    freq: str, partitions: Sequence[tuple[str, datetime, datetime]], now: datetime
) -> tuple[list[str], list[str]]:
    """(names to drop, names to move to the cold tier), oldest first: pure, for the tests."""
    drop, move = [], []
    for name, _, hi in sorted(partitions, key=lambda p: p[1]):
        if hi <= now - RETENTION[freq]:
            drop.append(name)
        elif hi <= now - WARM_AFTER:
            move.append(name)
    return drop, move


async def hot_partitions(
    conn: asyncpg.Connection, freq: str
) -> list[tuple[str, datetime, datetime]]:
    """(name, start, end) of the attached partitions of ``bars_<freq>`` in this schema."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass($1) ORDER BY c.relname",
        f"bars_{freq}",
    )
    out = []
    for row in rows:
        lo = datetime.strptime(row["relname"].rsplit("_p", 1)[1], "%Y%m%d").replace(tzinfo=UTC)
        out.append((row["relname"], *partition_bounds(freq, lo)))
    return out


async def _schema(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval("SELECT current_schema()"))


def _tier_key(schema: str, freq: str, lo: datetime) -> str:
    return f"tiers/{schema}/bars_{freq}/{lo:%Y%m%d}.parquet"


async def _drop_partition(conn: asyncpg.Connection, freq: str, name: str) -> None:
    await conn.execute(f"ALTER TABLE bars_{freq} DETACH PARTITION {name}")
    await conn.execute(f"DROP TABLE {name}")


async def _move(
    conn: asyncpg.Connection, store: ObjectStore, freq: str, name: str, lo: datetime,
    hi: datetime, key: str,
) -> int:  # fmt: skip
    rows = await conn.fetch(
        f"SELECT {', '.join(_COLD_SCHEMA)} FROM {name} ORDER BY instrument, window_start"
    )
    df = pl.DataFrame([tuple(r) for r in rows], schema=_COLD_SCHEMA, orient="row")
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", compression_level=9, statistics=True)
    try:
        await asyncio.to_thread(store.put_new, key, buf.getvalue())
    except ObjectExists:  # a crashed run wrote it: keep it if it holds this partition's rows
        kept = pl.read_parquet(io.BytesIO(await asyncio.to_thread(store.get, key)))
        if kept.height != df.height:
            raise RuntimeError(
                f"{key} exists with {kept.height} rows, {name} has {df.height}"
            ) from None
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO bar_tiers (freq, partition_start, partition_end, object_key, rows, "
            "min_start, max_start) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            freq, lo, hi, key, df.height,
            df["window_start"].min() if df.height else None,
            df["window_start"].max() if df.height else None,
        )  # fmt: skip
        await _drop_partition(conn, freq, name)
    return df.height


async def run_lifecycle(
    conn: asyncpg.Connection,
    store: ObjectStore,
    *,
    now: datetime | None = None,
    freqs: Sequence[str] = tuple(FREQUENCIES),
) -> LifecycleReport:
    """Apply retention and tiering to every frequency as of ``now`` (default: the clock)."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    report = LifecycleReport()
    schema = await _schema(conn)
    for freq in freqs:
        drop, move = plan(freq, await hot_partitions(conn, freq), now)
        for name in drop:
            async with conn.transaction():
                await _drop_partition(conn, freq, name)
            report.dropped.append(name)
        bounds = {n: (lo, hi) for n, lo, hi in await hot_partitions(conn, freq)}
        for name in move:
            lo, hi = bounds[name]
            report.rows_moved += await _move(
                conn, store, freq, name, lo, hi, _tier_key(schema, freq, lo)
            )
            report.moved.append(name)
        expired = await conn.fetch(
            "SELECT partition_start, object_key FROM bar_tiers WHERE freq = $1 "
            "AND dropped_at IS NULL AND partition_end <= $2 ORDER BY partition_start",
            freq, now - RETENTION[freq],
        )  # fmt: skip
        for row in expired:
            await asyncio.to_thread(store.delete, row["object_key"])
            await conn.execute(
                "UPDATE bar_tiers SET dropped_at = clock_timestamp() "
                "WHERE freq = $1 AND partition_start = $2",
                freq, row["partition_start"],
            )  # fmt: skip
            report.expired.append(row["object_key"])
    report.seconds = time.perf_counter() - started
    return report


async def _cold_objects(
    conn: asyncpg.Connection, freq: str, lo: datetime, hi: datetime
) -> list[str]:
    if not await conn.fetchval("SELECT to_regclass('bar_tiers') IS NOT NULL"):
        return []
    rows = await conn.fetch(
        "SELECT object_key FROM bar_tiers WHERE freq = $1 AND dropped_at IS NULL "
        "AND partition_end > $2 AND partition_start < $3 AND rows > 0 ORDER BY partition_start",
        freq, lo, hi,
    )  # fmt: skip
    return [r["object_key"] for r in rows]


async def read_tiered_bars(
    conn: asyncpg.Connection | asyncpg.Pool,
    keys: Sequence[str],
    freq: str,
    lo: datetime,
    hi: datetime,
    hot: pl.DataFrame,
    *,
    exchange_tz: str,
    store: ObjectStore | None = None,
) -> pl.DataFrame:
    """``hot`` (the PostgreSQL rows of ``[lo, hi)``) plus the cold tier's rows, one frame."""
    keys_cold = await _cold_objects(conn, freq, lo, hi)  # type: ignore[arg-type]
    if not keys_cold:
        return hot
    store = store or ObjectStore()
    lo, hi = lo.astimezone(UTC), hi.astimezone(UTC)
    frames = [hot.drop("date")]
    for key in keys_cold:
        body = await asyncio.to_thread(store.get, key)
        frames.append(
            pl.read_parquet(io.BytesIO(body), columns=list(_READ_SCHEMA)).filter(
                pl.col("instrument").is_in(list(keys))
                & (pl.col("window_start") >= lo)
                & (pl.col("window_start") < hi)
            )
        )
    return (
        pl.concat(frames)
        .sort("window_start")
        .with_columns(date=pl.col("window_start").dt.convert_time_zone(exchange_tz).dt.date())
    )


def _run(args: argparse.Namespace) -> int:
    from mdstream.storage.postgres import create_pool

    now = datetime.fromisoformat(args.now) if args.now else None

    async def main() -> LifecycleReport:
        pool = await create_pool(schema=args.schema, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await run_lifecycle(conn, ObjectStore(), now=now)
        finally:
            await pool.close()

    while True:
        report = asyncio.run(main())
        print(json.dumps(asdict(report)), file=sys.stdout, flush=True)
        if not args.every:
            return 0
        time.sleep(args.every)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lifecycle", help="apply bar retention (drop partitions) and move old ones to S3 Parquet"
    )
    parser.add_argument("--now", default=None, help="ISO time to act as of (default: now)")
    parser.add_argument("--schema", default=None, help="PostgreSQL schema (default: search_path)")
    parser.add_argument("--every", type=float, default=None, help="repeat every N seconds")
    parser.set_defaults(func=_run)
