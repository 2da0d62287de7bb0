"""Reading history: stored raw bars, adjusted on read from the factor table as known at a time.

    >>> from mdstream.storage import history
    >>> history.bars("AAPL", date(2014, 1, 1), date(2014, 12, 31), "1d", adjustment="adjusted")

:func:`bars` is synchronous for users (notebooks, scripts): it runs asyncpg on a private event
loop, in a helper thread when the caller already runs one. Async code calls :func:`bars_async`
with its own pool or connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, time
from typing import Literal

import asyncpg
import polars as pl

from mdstream.core.corporate_actions import (
    AdjustmentMode,
    ForwardAdjustment,
    adjust,
    forward_factor,
)
from mdstream.core.instruments import UnknownInstrument
from mdstream.core.normalise import datetime_to_ns
from mdstream.settings import settings
from mdstream.storage import quality_history
from mdstream.storage.bars import bar_bounds, read_bars
from mdstream.storage.corporate_actions import read_factor_table
from mdstream.storage.lifecycle import read_tiered_bars
from mdstream.storage.postgres import create_pool

__all__ = [
    "ADJUSTMENTS",
    "bars",
    "bars_async",
    "forward_adjustment_async",
    "instrument_keys",
    "quality",
    "sla",
]

Adjustment = Literal["raw", "split", "adjusted", "total_return"]

#: The names users pass → the core's modes.
ADJUSTMENTS: dict[str, AdjustmentMode] = {
    "raw": AdjustmentMode.RAW,
    "split": AdjustmentMode.SPLIT_ADJUSTED,
    "adjusted": AdjustmentMode.ADJUSTED,
    "total_return": AdjustmentMode.TOTAL_RETURN,
}


async def bars_async(
    conn: asyncpg.Connection | asyncpg.Pool,
    symbol: str,
    start: date | datetime,
    end: date | datetime,
    freq: str = "1d",
    adjustment: Adjustment = "raw",
    as_of: date | datetime | None = None,
    *,
    exchange_tz: str = "America/New_York",
) -> pl.DataFrame:
    """See :func:`bars`."""
    if adjustment not in ADJUSTMENTS:
        raise ValueError(f"adjustment must be one of {sorted(ADJUSTMENTS)}, got {adjustment!r}")
    mode = ADJUSTMENTS[adjustment]
    keys = instrument_keys(symbol, end)
    hot = await read_bars(conn, keys, freq, start, end, exchange_tz=exchange_tz)
    lo, hi = bar_bounds(start, end, exchange_tz)
    raw = await read_tiered_bars(conn, keys, freq, lo, hi, hot, exchange_tz=exchange_tz)
    if mode is AdjustmentMode.RAW:
        return raw
    factors = await read_factor_table(conn, keys)
    return adjust(raw, factors, mode, as_of=as_of)


async def forward_adjustment_async(
    conn: asyncpg.Connection | asyncpg.Pool,
    symbol: str,
    bar_date: date,
    *,
    anchor_date: date,
    adjustment: Adjustment = "adjusted",
    as_of: date | datetime | None = None,
) -> ForwardAdjustment:
    """Multipliers that put a new live bar of `bar_date` on the scale of a history adjusted as
    of `anchor_date`, from the stored factor table: a consumer streaming onto a series it
    back-adjusted once applies them as events take effect, and never rewrites that series."""
    keys = instrument_keys(symbol, bar_date)
    factors = await read_factor_table(conn, keys)
    factors = factors.with_columns(instrument_id=pl.lit(keys[0]))
    return forward_factor(
        factors, keys[0], bar_date, anchor_date=anchor_date, mode=ADJUSTMENTS[adjustment],
        as_of=as_of,
    )  # fmt: skip


def instrument_keys(symbol: str, at: date | datetime) -> list[str]:
    """The keys `symbol`'s rows may be stored under: the instrument master's canonical id for
    the symbol at `at` (what the pipeline writes, stable across renames), and the symbol itself
    (rows written without a master, or of instruments it does not know)."""
    master = settings.pipeline.instruments
    if master is None:
        return [symbol]
    moment = at if isinstance(at, datetime) else datetime.combine(at, time(12), UTC)
    try:
        known = master.resolve(symbol, datetime_to_ns(moment))
    except UnknownInstrument:
        return [symbol]
    return [known.instrument_id, symbol]


def bars(
    symbol: str,
    start: date | datetime,
    end: date | datetime,
    freq: str = "1d",
    adjustment: Adjustment = "raw",
    as_of: date | datetime | None = None,
    *,
    dsn: str | None = None,
    schema: str | None = None,
    exchange_tz: str = "America/New_York",
) -> pl.DataFrame:
    """Bars of ``symbol`` at ``freq`` (1s, 1m, 1h, 1d), oldest first, from every tier: the
    PostgreSQL partitions and the Parquet objects the lifecycle moved to S3 (one frame).

    ``start``/``end``: dates select sessions start..end inclusive (exchange-local dates);
    aware datetimes select ``window_start`` in [start, end). ``adjustment``: raw, split,
    adjusted (splits + dividends) or total_return (the core's modes); prices of open, high, low,
    close and vwap are adjusted, volumes inversely to splits. ``as_of`` uses only the factors
    known then (a date: by the end of that day UTC), so a backtest sees the series it could
    have read that day; None: everything known now. Columns: instrument, window_start,
    window_end, OHLC, volume, vwap, trade_count, revision, date (the session date that
    decides which events a bar precedes). ``exchange_tz`` gives that date until the
    instrument master supplies each instrument's zone. ``dsn`` defaults to
    ``MDSTREAM_POSTGRES_DSN`` / the local services; ``schema`` confines the read to one schema.
    """

    return _on_private_loop(
        lambda pool: bars_async(
            pool, symbol, start, end, freq, adjustment, as_of, exchange_tz=exchange_tz
        ),
        dsn,
        schema,
    )


def quality(
    start: datetime,
    end: datetime,
    *,
    instruments: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    interval: str = "1m",
    dsn: str | None = None,
    schema: str | None = None,
) -> pl.DataFrame:
    """Stored bars' quality scores, provider, latency and lineage in [start, end)
    (:func:`mdstream.storage.quality_history.read_quality`)."""
    return _on_private_loop(
        lambda pool: quality_history.read_quality(
            pool, start, end, instruments=instruments, providers=providers, interval=interval
        ),
        dsn,
        schema,
    )


def sla(
    start: datetime,
    end: datetime,
    *,
    interval: str = "1m",
    bucket: str = "day",
    dsn: str | None = None,
    schema: str | None = None,
) -> pl.DataFrame:
    """Availability, completeness, quality and latency percentiles per provider, instrument
    and day/hour (:func:`mdstream.storage.quality_history.sla`)."""
    return _on_private_loop(
        lambda pool: quality_history.sla(pool, start, end, interval=interval, bucket=bucket),
        dsn,
        schema,
    )


def _on_private_loop(
    query: Callable[[asyncpg.Pool], Awaitable[pl.DataFrame]], dsn: str | None, schema: str | None
) -> pl.DataFrame:
    """Run ``query`` on a read-only pool on a private event loop (a helper thread when the
    caller already runs one)."""

    async def run() -> pl.DataFrame:
        pool = await create_pool(dsn, schema=schema, max_size=1, read_only=True)
        try:
            return await query(pool)
        finally:
            await pool.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, run()).result()
