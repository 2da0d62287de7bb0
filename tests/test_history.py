"""Bar storage and history.bars in the real PostgreSQL; Lean's adjusted AAPL as the oracle."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import polars as pl
import pytest

from mdstream.core.corporate_actions import AdjustmentMode, adjust, compute_factors
from mdstream.ingest.datasets import lean_factor_file_events, read_lean_daily, read_lean_factor_file
from mdstream.services import Endpoints
from mdstream.storage import bars as bar_store
from mdstream.storage import history
from mdstream.storage.corporate_actions import record_announcements
from tests.pg import pg  # noqa: F401  (fixture)
from tests.shared_data import shared_path

pytestmark = pytest.mark.services

NEW_YORK = ZoneInfo("America/New_York")


def _event(symbol: str, start: datetime, close: float, **extra: Any) -> dict[str, Any]:
    """A NormalizedMarketDataEvent record (as the bar builder emits it) for a 1 min bar."""
    ns = int(start.timestamp()) * 10**9
    return {
        "eventId": f"{symbol}-{ns}",
        "timestamp": ns,
        "instrument": {
            "symbol": symbol,
            "exchange": None,
            "isin": None,
            "instrument_type": "EQUITY",
        },
        "ohlcv": {
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": 100.0,
            "vwap": close,
            "trade_count": 3,
        },
        "timestamp_utc": ns,
        "interval": "1m",
        "window_start": ns,
        "window_end": ns + 60 * 10**9,
        "quality_metrics": {
            "completeness": 1.0,
            "accuracy_score": 1.0,
            "timeliness_score": 1.0,
            "source_reliability": 1.0,
        },
        "adjustments_applied": [],
        "sources": ["alpaca"],
        **extra,
    }


async def test_bar_rows_upsert_by_revision_into_partitions_made_on_demand(pg) -> None:  # noqa: F811
    pool, _ = pg
    jan = datetime(2024, 1, 31, 15, 59, tzinfo=UTC)
    feb = datetime(2024, 2, 1, 14, 30, tzinfo=UTC)
    original = [
        bar_store.bar_row(_event("X", jan, 10.0)),
        bar_store.bar_row(_event("X", feb, 20.0)),
    ]
    assert {freq for freq, _ in original} == {"1m"}
    assert original[0][1][bar_store.BAR_COLUMNS.index("revision")] == 0  # no field: revision 0
    rows = [row for _, row in original]

    def corrected(close: float, revision: int) -> tuple[Any, ...]:
        return bar_store.bar_row(_event("X", jan, close, revision=revision))[1]

    async with pool.acquire() as conn:
        assert await bar_store.write_bars(conn, "1m", rows) == 2
        partitions = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass('bars_1m') ORDER BY 1"
        )
        assert [p["relname"] for p in partitions] == ["bars_1m_p20240101", "bars_1m_p20240201"]
        assert await bar_store.write_bars(conn, "1m", rows) == 0  # a replay changes nothing
        assert await bar_store.write_bars(conn, "1m", [corrected(11.0, 1)]) == 1  # a correction
        assert await bar_store.write_bars(conn, "1m", [corrected(9.0, 1)]) == 0  # same revision
        assert await bar_store.write_bars(conn, "1m", [rows[0]]) == 0  # the stale original
        # one batch with two revisions of one bar: the highest wins
        assert await bar_store.write_bars(conn, "1m", [corrected(13.0, 3), corrected(12.0, 2)]) == 1
        stored = await bar_store.read_bars(conn, "X", "1m", date(2024, 1, 31), date(2024, 2, 1))
    assert stored.select("close", "revision").rows() == [(13.0, 3), (20.0, 0)]
    assert stored.get_column("date").to_list() == [date(2024, 1, 31), date(2024, 2, 1)]
    with pytest.raises(ValueError, match="unsupported bar frequency"):
        bar_store.bar_row(_event("X", jan, 1.0, interval="5m"))


def _lean_factor_at(factor_file: pl.DataFrame, days: pl.DataFrame) -> pl.DataFrame:
    """Lean's factors of each day: those of the first row dated on or after it."""
    return days.sort("date").join_asof(
        factor_file.select("date", "price_factor", "split_factor").sort("date"),
        on="date",
        strategy="forward",
    )


async def _store_lean_aapl(pool: asyncpg.Pool) -> tuple[pl.DataFrame, pl.DataFrame, list[Any]]:
    daily = read_lean_daily(shared_path("lean", "equity", "usa", "daily", "aapl.zip"))
    factor_file = read_lean_factor_file(
        shared_path("lean", "equity", "usa", "factor_files", "aapl.csv")
    )
    events = lean_factor_file_events(
        factor_file, daily.get_column("date"), instrument_id="AAPL", symbol="AAPL"
    )
    rows = []
    for bar in daily.iter_rows(named=True):
        start = datetime.combine(bar["date"], time(), tzinfo=NEW_YORK)  # Lean stamps local 00:00
        rows.append(
            ("AAPL", start, start + timedelta(days=1), bar["open"], bar["high"], bar["low"],
             bar["close"], float(bar["volume"]), None, 0, 0, None, [])
        )  # fmt: skip
    async with pool.acquire() as conn:
        assert await bar_store.write_bars(conn, "1d", rows) == daily.height
        # the dividends' reference closes come from the bars just stored
        outcomes = await record_announcements(conn, events, key_prefix="lean-aapl")
    assert all(o.applied for o in outcomes), [o.reason for o in outcomes if not o.applied]
    return daily, factor_file, events


@pytest.mark.realdata
async def test_history_reproduces_lean_adjusted_aapl(pg, services: Endpoints) -> None:  # noqa: F811
    pool, schema = pg
    daily, factor_file, _ = await _store_lean_aapl(pool)
    start, end = date(1998, 1, 1), date(2021, 12, 31)
    # the synchronous user API, on its private loop (here in a helper thread: a loop runs)
    adjusted = history.bars(
        "AAPL", start, end, "1d", "adjusted", dsn=services.postgres_dsn, schema=schema
    )
    assert adjusted.height == daily.height
    # Lean prints split factors with 6 significant digits (1/56 reads 0.0178571, 2.4e-6 off);
    # AAPL's compounded splits are exactly 1/112, 1/56, 1/28, 1/4 and 1, and the file's value
    # is that exact factor to its printed precision. Prices are compared with
    # Lean's price_factor x the exact split factor, and volumes divided by it.
    lean = _lean_factor_at(factor_file, daily).with_columns(
        exact_split=1.0 / (1.0 / pl.col("split_factor")).round(0)
    )
    printed = lean.select((pl.col("exact_split") / pl.col("split_factor") - 1).abs().max()).item()
    assert printed <= 5e-6  # within half a unit of the 6th significant digit
    lean = lean.with_columns(
        want_close=pl.col("close") * pl.col("price_factor") * pl.col("exact_split"),
        want_volume=pl.col("volume") / pl.col("exact_split"),
        printed_close=pl.col("close") * pl.col("price_factor") * pl.col("split_factor"),
    )
    got = adjusted.select("date", "close", "volume").join(lean, on="date", suffix="_raw")
    err = got.select(
        close=(pl.col("close") / pl.col("want_close") - 1).abs().max(),
        volume=(pl.col("volume") / pl.col("want_volume") - 1).abs().max(),
        printed=(pl.col("close") / pl.col("printed_close") - 1).abs().max(),
    ).row(0, named=True)
    print(f"\nhistory.bars AAPL adjusted vs Lean over {got.height} bars: max rel error close "
          f"{err['close']:.2e}, volume {err['volume']:.2e}; vs the printed split factors "
          f"{err['printed']:.2e}")  # fmt: skip
    assert err["close"] <= 1e-6 and err["volume"] <= 1e-6
    assert err["printed"] <= printed + 1e-6

    # As known on 2014-06-01, before the 7:1 split (ex 2014-06-09): the pre-split view. Every
    # bar is scaled by the factors of events with ex-date in (its date, 2014-06-01] only.
    as_of = date(2014, 6, 1)
    before = history.bars(
        "AAPL", date(2013, 1, 1), date(2014, 12, 31), "1d", "adjusted", as_of,
        dsn=services.postgres_dsn, schema=schema,
    )  # fmt: skip
    at_as_of = _lean_factor_at(factor_file, pl.DataFrame({"date": [as_of]})).row(0, named=True)
    pit = _lean_factor_at(factor_file, daily).with_columns(
        want=pl.when(pl.col("date") < as_of)
        .then(
            pl.col("close")
            * pl.col("price_factor")
            / at_as_of["price_factor"]
            * pl.col("split_factor")  # the same printed value from 2005 to the 2014 split
            / at_as_of["split_factor"]
        )
        .otherwise(pl.col("close"))
    )
    compared = before.select("date", "close", "volume").join(pit, on="date", suffix="_raw")
    assert compared.height == before.height > 400
    assert compared.select((pl.col("close") / pl.col("want") - 1).abs().max()).item() <= 1e-6
    june6 = compared.filter(pl.col("date") == date(2014, 6, 6)).row(0, named=True)
    assert june6["close"] == june6["close_raw"] == 645.57  # raw: no event known after it
    assert june6["volume"] == june6["volume_raw"]
    assert (compared["volume"] == compared["volume_raw"]).all()  # no split known by then


@pytest.mark.realdata
async def test_history_modes_match_the_core_on_the_stored_factors(pg, services: Endpoints) -> None:  # noqa: F811
    pool, schema = pg
    daily, _, events = await _store_lean_aapl(pool)
    factors = compute_factors(daily.select("date", "close"), events)
    start, end = date(2012, 1, 1), date(2016, 12, 31)
    window = daily.filter(pl.col("date").is_between(start, end))
    for name, mode in (
        ("split", AdjustmentMode.SPLIT_ADJUSTED),
        ("total_return", AdjustmentMode.TOTAL_RETURN),
    ):
        got = history.bars("AAPL", start, end, "1d", name, dsn=services.postgres_dsn, schema=schema)  # type: ignore[arg-type]
        want = adjust(window, factors, mode)
        assert got.get_column("date").to_list() == want.get_column("date").to_list()
        for column in ("open", "high", "low", "close", "volume"):
            assert got.get_column(column).to_list() == pytest.approx(
                want.get_column(column).to_list(), rel=1e-12
            ), (name, column)
    raw = history.bars("AAPL", start, end, "1d", dsn=services.postgres_dsn, schema=schema)
    assert raw.get_column("close").to_list() == window.get_column("close").to_list()
    with pytest.raises(ValueError, match="adjustment must be one of"):
        history.bars(
            "AAPL", start, end, "1d", "dividends", dsn=services.postgres_dsn, schema=schema
        )  # type: ignore[arg-type]


@pytest.mark.realdata
async def test_forward_adjustment_puts_live_bars_on_the_anchor_scale(
    pg,  # noqa: F811
    services: Endpoints,
) -> None:
    """A series back-adjusted as of 2014-06-06 continues across the 7:1 split of 2014-06-09:
    the first post-split raw close × the forward multiplier sits next to the last pre-split one."""
    pool, _ = pg
    daily, _, _ = await _store_lean_aapl(pool)
    fwd = await history.forward_adjustment_async(
        pool, "AAPL", date(2014, 6, 9), anchor_date=date(2014, 6, 6), adjustment="split"
    )
    assert fwd.ex_dates == (date(2014, 6, 9),)
    assert fwd.price_multiplier == pytest.approx(7.0) and fwd.volume_multiplier == pytest.approx(
        1 / 7
    )
    close = dict(zip(daily["date"].to_list(), daily["close"].to_list(), strict=True))
    assert close[date(2014, 6, 9)] * fwd.price_multiplier == pytest.approx(
        close[date(2014, 6, 6)], rel=0.03
    )
    same_day = await history.forward_adjustment_async(
        pool, "AAPL", date(2014, 6, 6), anchor_date=date(2014, 6, 6)
    )
    assert (same_day.price_multiplier, same_day.ex_dates) == (1.0, ())
