"""Exact oracle: Databento's own 1-minute ESU4 bars from the 120 trades they were built from."""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl
import pytest

from mdstream.core.bars import BarConventions, trade_bars
from mdstream.core.config import PipelineConfig
from mdstream.core.normalise import DATABENTO, normalise
from mdstream.core.processor import process_batch
from tests.shared_data import shared_path

pytestmark = pytest.mark.realdata

dbn = pytest.importorskip("databento_dbn")

ESU4 = 118  # instrument id of ESU4 in futures_definition.dbn.zst
TRADES = "futures_trades_2024-07-01T23-58_2024-07-02T00-02.dbn.zst"
BARS = "futures_ohlcv-1m_2024-07-01T23-40_2024-07-02T00-10.dbn.zst"


def _records(path: Path) -> list:
    decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD)
    decoder.write(path.read_bytes())
    records = decoder.decode()
    assert isinstance(records[0], dbn.Metadata)
    return records[1:]


@pytest.fixture(scope="module")
def trades() -> pl.DataFrame:
    rows = [r for r in _records(shared_path("databento", TRADES)) if r.instrument_id == ESU4]
    assert len(rows) == 120 and {str(r.action) for r in rows} == {str(dbn.Action.TRADE)}
    return pl.DataFrame(
        {
            "ts": [r.ts_event for r in rows],
            "price": [r.price for r in rows],  # int64 × 1e-9, kept as integers
            "size": [r.size for r in rows],
        }
    )


@pytest.fixture(scope="module")
def vendor_bars(trades: pl.DataFrame) -> pl.DataFrame:
    lo, hi = trades["ts"].min(), trades["ts"].max()
    rows = [
        r
        for r in _records(shared_path("databento", BARS))
        if r.instrument_id == ESU4 and lo - 60_000_000_000 < r.ts_event <= hi
    ]
    return pl.DataFrame(
        {
            "ts": [r.ts_event for r in rows],
            "open": [r.open for r in rows],
            "high": [r.high for r in rows],
            "low": [r.low for r in rows],
            "close": [r.close for r in rows],
            "volume": [r.volume for r in rows],
        }
    )


def test_our_minute_bars_equal_databentos_exactly(
    trades: pl.DataFrame, vendor_bars: pl.DataFrame
) -> None:
    ours = trade_bars(trades, "1m")
    assert vendor_bars.height == 4  # the four minutes the trades cover
    cols = ["ts", "open", "high", "low", "close", "volume"]
    assert ours.select(cols).cast(pl.Int64).to_dicts() == vendor_bars.cast(pl.Int64).to_dicts()
    assert ours["trade_count"].sum() == 120


def test_the_oracle_tells_conventions_apart(
    trades: pl.DataFrame, vendor_bars: pl.DataFrame
) -> None:
    """Stamping at the end, or 2-minute windows, do not match: the oracle pins our defaults."""
    at_end = trade_bars(trades, "1m", BarConventions(label="end"))
    assert at_end["ts"].to_list() != vendor_bars["ts"].to_list()
    assert trade_bars(trades, "2m").height != vendor_bars.height


def test_the_streaming_pipeline_gives_the_same_minutes(
    trades: pl.DataFrame, vendor_bars: pl.DataFrame
) -> None:
    """The 120 trades through the pipeline step (normalised floats, in batches of 7, as a feed
    would bring them) give Databento's bars too."""
    tape = normalise(trades.rename({"ts": "ts_event"}), DATABENTO)
    cfg = PipelineConfig(intervals=("1m",))
    state: dict = {}
    bars = []
    rows = tape.rows(named=True)
    for lo in range(0, len(rows), 7):
        out = process_batch(_raw_batch(rows[lo : lo + 7]), state, 0, cfg, 0)
        assert out.dead_letters == [] and out.alerts == []
        bars += out.bars
    last = rows[-1]["ts"]
    bars += process_batch(
        _raw_batch([{**rows[-1], "ts": last + 120 * 10**9}]), state, 0, cfg, 0
    ).bars
    got = [
        (b["window_start"], *(b["ohlcv"][f] for f in ("open", "high", "low", "close", "volume")))
        for b in bars
    ]
    want = [
        (r["ts"], *(r[f] / 1e9 for f in ("open", "high", "low", "close")), float(r["volume"]))
        for r in vendor_bars.iter_rows(named=True)
    ]
    assert got == want


def _raw_batch(rows: list[dict]) -> dict:
    return {
        "batchId": str(uuid.uuid4()),
        "timestamp": rows[-1]["ts"],
        "source": "databento",
        "instrument": {"symbol": "ESU4", "exchange": "XCME", "isin": None},
        "ticks": [
            {
                "kind": "TRADE",
                "timestamp": r["ts"],
                "provider_timestamp": r["ts"],
                "price": r["price"],
                "volume": r["size"],
                "bid": None,
                "ask": None,
                "sequence": None,
                "conditions": None,
            }
            for r in rows
        ],
    }
