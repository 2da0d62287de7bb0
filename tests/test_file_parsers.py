"""CSV/Parquet mapping and Databento DBN parsing, without Kafka (fast)."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.providers.databento import parse_dbn
from mdstream.providers.tabular import ColumnMap, frame_bars, frame_ticks
from tests.shared_data import shared_path


def test_column_mapping_parse_and_errors():
    cols = ColumnMap.parse("symbol=ticker, timestamp=ts")
    assert (cols.symbol, cols.timestamp, cols.price) == ("ticker", "ts", "price")
    with pytest.raises(ValueError, match="bad column mapping"):
        ColumnMap.parse("colour=red")
    with pytest.raises(ValueError):
        ColumnMap.parse("symbol")


def test_timestamps_naive_local_aware_and_epoch_units():
    frame = pl.DataFrame(
        {
            "symbol": ["A", "A", "A"],
            "timestamp": ["2024-01-02 09:30:00", "2024-07-01 09:30:00", "2024-07-01 09:30:00.5"],
            "price": [1.0, 2.0, 3.0],
        }
    )
    r = frame_ticks(frame, "f", tz="America/New_York")
    assert [t.tick["timestamp"] for t in r.ticks] == [
        1_704_205_800_000_000_000,  # 14:30 UTC in winter
        1_719_840_600_000_000_000,  # 13:30 UTC in summer
        1_719_840_600_500_000_000,
    ]
    aware = pl.DataFrame({"symbol": ["A"], "timestamp": ["2024-07-01T13:30:00Z"], "price": [1.0]})
    assert frame_ticks(aware, "f", tz="Asia/Tokyo").ticks[0].tick["timestamp"] == (
        1_719_840_600_000_000_000
    )
    ms = pl.DataFrame({"symbol": ["A"], "timestamp": [1_719_840_600_123], "price": [1.0]})
    assert frame_ticks(ms, "f", time_unit="ms").ticks[0].tick["timestamp"] == (
        1_719_840_600_123_000_000
    )


def test_quotes_kinds_and_bad_rows_each_with_their_reasons():
    frame = pl.DataFrame(
        {
            "symbol": ["A", "A", None, "A"],
            "timestamp": [1, 2, 3, 4],
            "bid": ["1.0", "x", "1.0", "1.0"],
            "ask": [1.1, 1.1, 1.1, 1.1],
            "kind": ["quote", "QUOTE", "QUOTE", "CANCEL"],
        }
    )
    r = frame_ticks(frame, "f")
    assert [(t.tick["kind"], t.tick["bid"], t.tick["price"]) for t in r.ticks] == [
        ("QUOTE", 1.0, None)
    ]
    assert sorted(e.reason for e in r.errors) == [
        "kind is neither TRADE nor QUOTE",
        "missing symbol",
        "non-numeric bid",
    ]
    assert b'"CANCEL"' in next(e.payload for e in r.errors if "kind" in e.reason)


def test_missing_required_column_is_an_error_not_a_crash():
    r = frame_ticks(pl.DataFrame({"price": [1.0]}), "f")
    assert not r.ticks and "missing columns" in r.errors[0].reason


@pytest.mark.realdata
def test_yahoo_daily_bars_through_a_mapping():
    frame = pl.read_csv(shared_path("yahoo", "AAPL.csv")).with_columns(symbol=pl.lit("AAPL"))
    r = frame_bars(frame, "yahoo", "1d", ColumnMap.parse("timestamp=day"), tz="America/New_York")
    assert len(r.bars) == frame.height and not r.errors
    assert r.bars[0].close == frame["close"][0]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(max_size=5)),
            st.one_of(st.none(), st.text(max_size=25), st.integers()),
            st.one_of(st.none(), st.text(max_size=8)),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_tabular_fuzz_never_raises_and_loses_nothing(rows):
    frame = pl.DataFrame(
        {
            "symbol": [r[0] for r in rows],
            "timestamp": [str(r[1]) if r[1] is not None else None for r in rows],
            "price": [r[2] for r in rows],
        },
        schema={"symbol": pl.String, "timestamp": pl.String, "price": pl.String},
    )
    r = frame_ticks(frame, "f")
    if not (len(r.errors) == 1 and r.errors[0].payload == b""):
        assert len(r.ticks) + len(r.errors) == len(rows)  # every row is a tick or an error


@pytest.mark.realdata
def test_databento_trades_mbp1_ohlcv():
    trades = parse_dbn(
        shared_path(
            "databento", "futures_trades_2024-07-01T23-58_2024-07-02T00-02.dbn.zst"
        ).read_bytes()
    )
    assert len(trades.ticks) == 120 and not trades.errors
    first = trades.ticks[0]
    assert (first.symbol, first.tick["price"], first.tick["volume"]) == ("ESU4", 5528.75, 2.0)
    assert first.tick["timestamp"] == 1719878281218218853
    assert first.tick["provider_timestamp"] == 1719878281218485389  # ts_recv
    mbp = parse_dbn(
        shared_path(
            "databento", "futures_mbp-1_2024-07-01T23-58_2024-07-02T00-02.dbn.zst"
        ).read_bytes()
    )
    kinds = {t.tick["kind"] for t in mbp.ticks}
    assert kinds == {"TRADE", "QUOTE"} and len(mbp.ticks) == 2288
    assert sum(t.tick["kind"] == "TRADE" for t in mbp.ticks) == 120
    assert all(t.tick["bid"] < t.tick["ask"] for t in mbp.ticks if t.tick["kind"] == "QUOTE")
    bars = parse_dbn(
        shared_path(
            "databento", "futures_ohlcv-1m_2024-07-01T23-40_2024-07-02T00-10.dbn.zst"
        ).read_bytes()
    )
    assert {b.symbol for b in bars.bars} == {"ESU4", "NQU4"} and len(bars.bars) == 60
    assert all(b.start_ns % 60_000_000_000 == 0 for b in bars.bars)
    definitions = parse_dbn(shared_path("databento", "futures_definition.dbn.zst").read_bytes())
    assert len(definitions.control) == 2 and not definitions.errors


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_dbn_garbage_is_an_error(data):
    r = parse_dbn(data)
    assert not r.ticks and not r.bars and r.errors


@pytest.mark.realdata
async def test_single_symbol_file_source_slices_by_time():
    from datetime import UTC, datetime

    from mdstream.ingest.files import TableFileSource

    path = shared_path("yahoo", "AAPL.csv")
    source = TableFileSource(
        [path],
        provider="yahoo",
        columns=ColumnMap.parse("timestamp=day"),
        tz="America/New_York",
        symbol="AAPL",
    )
    march = await source.fetch(
        "AAPL", datetime(2014, 3, 1, tzinfo=UTC), datetime(2014, 4, 1, tzinfo=UTC), "1d"
    )
    assert len(march.bars) == 21 and {b.symbol for b in march.bars} == {"AAPL"}
    assert (
        await source.fetch(
            "MSFT", datetime(2014, 3, 1, tzinfo=UTC), datetime(2014, 4, 1, tzinfo=UTC), "1d"
        )
    ).bars == []
    assert (await source.unplaced("1d")).errors == []
