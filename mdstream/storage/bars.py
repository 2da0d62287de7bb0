"""Bars in PostgreSQL: one table per frequency, partitioned by time, idempotent bulk upserts.

``bars_1s``, ``bars_1m``, ``bars_1h``, ``bars_1d``; primary key (instrument, window_start) (the
interval is the table). Without TimescaleDB each is a declarative RANGE-partitioned table on
``window_start`` whose partitions (a day for 1 s, a month for 1 min, a year for 1 h and 1 d) are
created on demand by :func:`write_bars`. When the ``timescaledb`` extension is installed in the
database before the first migration, the same tables become hypertables (chunked on
``window_start`` with the same spans) and no partition is created by hand.

Writes go through binary COPY into a temporary table, then one INSERT .. ON CONFLICT: a bar
already stored is replaced only by a higher ``revision`` (a correction); the same or a lower one
changes nothing, so replays are harmless. Raw prices only: adjustment happens on read
(:mod:`mdstream.storage.history`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import polars as pl

from mdstream.storage.migrations import FREQUENCIES

__all__ = [
    "BAR_COLUMNS",
    "FREQUENCIES",
    "bar_bounds",
    "bar_row",
    "ensure_partitions",
    "is_partitioned",
    "partition_bounds",
    "read_bars",
    "read_daily_closes",
    "write_bars",
]

BAR_COLUMNS = (
    "instrument",
    "window_start",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "revision",
    "event_id",
    "sources",
)


def _table(freq: str) -> str:
    if freq not in FREQUENCIES:
        raise ValueError(f"unsupported bar frequency {freq!r}; stored: {sorted(FREQUENCIES)}")
    return f"bars_{freq}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(ns: int) -> datetime:
    """Epoch ns → aware datetime (PostgreSQL keeps microseconds)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def bar_row(event: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A ``NormalizedMarketDataEvent`` → (frequency, row in :data:`BAR_COLUMNS` order).

    The instrument key is the event's ``instrument_id`` when it carries one, else its symbol;
    a bar without a ``revision`` (the field arrives with bar corrections) is revision 0.
    """
    instrument = event["instrument"]
    ohlcv = event["ohlcv"]
    freq = event["interval"]
    _table(freq)
    return freq, (
        instrument.get("instrument_id") or instrument["symbol"],
        _utc(event["window_start"]),
        _utc(event["window_end"]),
        ohlcv["open"],
        ohlcv["high"],
        ohlcv["low"],
        ohlcv["close"],
        ohlcv["volume"],
        ohlcv.get("vwap"),
        ohlcv.get("trade_count", 0),
        int(event.get("revision") or 0),
        event.get("eventId"),
        list(event.get("sources") or []),
    )


def partition_bounds(freq: str, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the partition holding ``at``."""
    span = FREQUENCIES[freq]
    at = at.astimezone(UTC)
    if span == "day":
        start = datetime(at.year, at.month, at.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    if span == "month":
        start = datetime(at.year, at.month, 1, tzinfo=UTC)
        nxt = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
        return start, nxt
    return datetime(at.year, 1, 1, tzinfo=UTC), datetime(at.year + 1, 1, 1, tzinfo=UTC)


async def is_partitioned(conn: asyncpg.Connection, freq: str) -> bool:
    """True for the plain (declarative partitioning) layout, False for a hypertable."""
    kind = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", _table(freq)
    )
    if kind is None:
        raise RuntimeError(f"{_table(freq)} does not exist: run the migrations")
    return kind == "p"


async def ensure_partitions(
    conn: asyncpg.Connection, freq: str, starts: Iterable[datetime]
) -> list[str]:
    """Create the missing partitions holding ``starts``; returns the names created."""
    table = _table(freq)
    created = []
    for lo, hi in sorted({partition_bounds(freq, s) for s in starts}):
        name = f"{table}_p{lo:%Y%m%d}"
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
            continue
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", name)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
        created.append(name)
    return created


_REVISION = BAR_COLUMNS.index("revision")


def _latest_revisions(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per (instrument, window_start): the highest revision, the first on a tie (as
    across batches, where only a higher revision replaces a stored bar)."""
    kept: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    for row in rows:
        key = (row[0], row[1])
        if key not in kept or row[_REVISION] > kept[key][_REVISION]:
            kept[key] = row
    return list(kept.values())


async def write_bars(conn: asyncpg.Connection, freq: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Upsert bars (rows in :data:`BAR_COLUMNS` order) with COPY; returns rows inserted or
    replaced by a higher revision. Runs in (or opens) one transaction."""
    if not rows:
        return 0
    table = _table(freq)
    rows = _latest_revisions(rows)
    async with conn.transaction():
        if await is_partitioned(conn, freq):
            await ensure_partitions(conn, freq, {r[1] for r in rows})
        # One staging table per frequency: an outer transaction (the sink's) may write several,
        # and ON COMMIT DROP waits for the outer commit.
        staging = f"staging_{table}"
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table} INCLUDING DEFAULTS) "
            "ON COMMIT DROP"
        )
        await conn.execute(f"TRUNCATE {staging}")
        await conn.copy_records_to_table(staging, records=rows, columns=BAR_COLUMNS)
        columns = ", ".join(BAR_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in BAR_COLUMNS[2:])
        status = await conn.execute(
            f"INSERT INTO {table} ({columns}) "
            f"SELECT {columns} FROM {staging} "
            f"ON CONFLICT (instrument, window_start) DO UPDATE SET {updates}, "
            f"written_at = clock_timestamp() WHERE {table}.revision < EXCLUDED.revision"
        )
    return int(status.rsplit(" ", 1)[-1])


def _local_midnight(day: date, exchange_tz: str) -> datetime:
    return datetime.combine(day, time(), tzinfo=ZoneInfo(exchange_tz))


def bar_bounds(
    start: date | datetime, end: date | datetime, exchange_tz: str
) -> tuple[datetime, datetime]:
    """Dates: sessions start..end inclusive (exchange-local). Datetimes: [start, end)."""

    def lower(x: date | datetime) -> datetime:
        if isinstance(x, datetime):
            if x.tzinfo is None:
                raise ValueError("datetimes must be timezone-aware")
            return x
        return _local_midnight(x, exchange_tz)

    upper = end if isinstance(end, datetime) else _local_midnight(end + timedelta(1), exchange_tz)
    return lower(start), lower(upper)


_READ_SCHEMA = {
    "instrument": pl.String(),
    "window_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "vwap": pl.Float64(),
    "trade_count": pl.Int64(),
    "revision": pl.Int32(),
}


async def read_bars(
    conn: asyncpg.Connection,
    instrument: str | Sequence[str],
    freq: str,
    start: date | datetime,
    end: date | datetime,
    *,
    exchange_tz: str = "America/New_York",
) -> pl.DataFrame:
    """Raw stored bars, oldest first, with ``date`` = the exchange-local session date.
    ``instrument``: the key the bars are stored under, or several (any of them matches)."""
    lo, hi = bar_bounds(start, end, exchange_tz)
    rows = await conn.fetch(
        f"SELECT {', '.join(_READ_SCHEMA)} FROM {_table(freq)} "
        "WHERE instrument = ANY($1::text[]) AND window_start >= $2 AND window_start < $3 "
        "ORDER BY window_start",
        [instrument] if isinstance(instrument, str) else list(instrument),
        lo,
        hi,
    )
    frame = pl.DataFrame([tuple(r) for r in rows], schema=_READ_SCHEMA, orient="row")
    return frame.with_columns(
        date=pl.col("window_start").dt.convert_time_zone(exchange_tz).dt.date()
    )


async def read_daily_closes(
    conn: asyncpg.Connection,
    instrument: str,
    *,
    until: date,
    limit: int,
    exchange_tz: str = "America/New_York",
) -> pl.DataFrame:
    """The last ``limit`` daily closes with session date ≤ ``until`` (``date``, ``close``)."""
    rows = await conn.fetch(
        "SELECT window_start, close FROM bars_1d WHERE instrument = $1 AND window_start < $2 "
        "ORDER BY window_start DESC LIMIT $3",
        instrument,
        _local_midnight(until + timedelta(1), exchange_tz),
        limit,
    )
    frame = pl.DataFrame(
        [tuple(r) for r in rows],
        schema={"window_start": pl.Datetime("us", "UTC"), "close": pl.Float64()},
        orient="row",
    )
    return frame.select(
        date=pl.col("window_start").dt.convert_time_zone(exchange_tz).dt.date(),
        close=pl.col("close"),
    ).sort("date")
