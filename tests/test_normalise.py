"""Normalisation of each provider's convention: times to epoch-ns UTC, prices, currencies, lots."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import polars as pl
import pytest

from mdstream.core.instruments import load_master
from mdstream.core.normalise import (
    ALPACA,
    ALPHA_VANTAGE,
    DATABENTO,
    DATABENTO_UNDEF_PRICE,
    FINNHUB,
    LEAN_TICKS,
    Convention,
    NormalisationError,
    epoch_to_ns,
    fx_rate,
    local_to_ns,
    normalise,
)
from tests.shared_data import shared_path

NS = 1_000_000_000
T = 1_719_878_281  # 2024-07-01T23:58:01Z


def _utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp()) * NS


@pytest.mark.parametrize(
    ("values", "unit"),
    [
        ([T], "s"),
        ([T * 1000 + 218], "ms"),
        ([T * 1_000_000 + 218_218], "us"),
        ([T * NS + 218_218_853], "ns"),
    ],
)
def test_epoch_units(values: list[int], unit: str) -> None:
    got = epoch_to_ns(pl.Series(values), unit)[0]
    assert got // NS == T and got == values[0] * {"s": NS, "ms": 10**6, "us": 10**3, "ns": 1}[unit]


def test_fractional_epoch_seconds_round_to_the_nearest_ns() -> None:
    assert epoch_to_ns(pl.Series([1_700_000_000.123456]), "s")[0] == 1_700_000_000_123_456_000


def test_unknown_epoch_unit_is_refused() -> None:
    with pytest.raises(NormalisationError, match="unit"):
        epoch_to_ns(pl.Series([1]), "minutes")


def test_exchange_local_strings_follow_dst() -> None:
    times = pl.Series(["2024-03-08 09:30:00", "2024-03-11 09:30:00"])  # EST, then EDT
    got = local_to_ns(times, "America/New_York").to_list()
    assert got == [_utc("2024-03-08T14:30:00+00:00"), _utc("2024-03-11T13:30:00+00:00")]


def test_nonexistent_and_ambiguous_local_times_are_errors_not_guesses() -> None:
    with pytest.raises(NormalisationError):
        local_to_ns(pl.Series(["2024-03-10 02:30:00"]), "America/New_York")
    with pytest.raises(NormalisationError):
        local_to_ns(pl.Series(["2024-11-03 01:30:00"]), "America/New_York")
    earliest = local_to_ns(
        pl.Series(["2024-11-03 01:30:00"]), "America/New_York", ambiguous="earliest"
    )
    assert earliest[0] == _utc("2024-11-03T05:30:00+00:00")


def test_finnhub_trades() -> None:
    frame = pl.DataFrame({"s": ["AAPL"], "p": [228.5], "t": [T * 1000 + 5], "v": [100]})
    out = normalise(frame, FINNHUB)
    assert out.row(0, named=True) == {
        "ts": T * NS + 5_000_000,
        "p": 228.5,
        "size": 100.0,
        "currency": "USD",
        "s": "AAPL",
    }


def test_alpaca_rfc3339_times() -> None:
    frame = pl.DataFrame({"t": ["2024-07-01T13:30:00.123456789Z"], "p": [1.0], "s": [3]})
    assert normalise(frame, ALPACA)["ts"][0] == _utc("2024-07-01T13:30:00+00:00") + 123_456_789


def test_alpha_vantage_local_bars() -> None:
    frame = pl.DataFrame(
        {
            "timestamp": ["2024-07-01 09:30:00"],
            "open": ["1.5"],
            "high": ["2"],
            "low": ["1"],
            "close": ["1.75"],
            "volume": ["10"],
        }
    )
    out = normalise(
        frame.with_columns(pl.col("open", "high", "low", "close").cast(pl.Float64)),
        ALPHA_VANTAGE,
        tz=load_master().resolve("AAPL", _utc("2024-07-01T12:00:00+00:00")).timezone,
    )
    row = out.row(0, named=True)
    assert row["ts"] == _utc("2024-07-01T13:30:00+00:00")
    assert (row["open"], row["close"], row["size"]) == (1.5, 1.75, 10.0)


def test_databento_fixed_point_prices_and_undefined_sentinel() -> None:
    frame = pl.DataFrame(
        {
            "ts_event": [T * NS, T * NS + 1],
            "price": [5_528_750_000_000, DATABENTO_UNDEF_PRICE],
            "size": [2, 1],
        }
    )
    out = normalise(frame, DATABENTO)
    assert out["price"].to_list() == [5528.75, None]
    assert out["ts"].to_list() == [T * NS, T * NS + 1]


def test_pence_become_pounds_and_convert_to_a_target_currency() -> None:
    frame = pl.DataFrame({"ts": [0], "price": [2345.5], "size": [10]})
    pounds = normalise(frame, Convention(), currency="GBX")
    assert pounds["price"][0] == pytest.approx(23.455, rel=1e-15)
    assert pounds["currency"][0] == "GBP"
    dollars = normalise(
        frame, Convention(), currency="GBX", target_currency="USD", fx={"GBP/USD": 1.25}
    )
    assert dollars["price"][0] == pytest.approx(23.455 * 1.25)
    assert dollars["currency"][0] == "USD"
    euros = normalise(
        frame, Convention(), currency="GBX", target_currency="EUR", fx={"EUR/GBP": 0.8}
    )  # only the inverse rate is given
    assert euros["price"][0] == pytest.approx(23.455 / 0.8)


def test_missing_fx_rate_is_an_error() -> None:
    with pytest.raises(NormalisationError, match="JPY/USD"):
        fx_rate("JPY", "USD", {"GBP/USD": 1.25})


def test_lots_become_shares() -> None:
    frame = pl.DataFrame({"ts": [0], "price": [10.0], "size": [3]})
    assert normalise(frame, Convention(lot_size=100))["size"][0] == 300.0


def test_lean_ticks_since_local_midnight() -> None:
    frame = pl.DataFrame({"ts": [14_400_464], "price": [1_674_100], "size": [100]})
    out = normalise(frame, LEAN_TICKS, tz="America/New_York", day=dt.date(2013, 10, 7))
    assert out["ts"][0] == _utc("2013-10-07T08:00:00+00:00") + 464_000_000
    assert out["price"][0] == 167.41
    winter = normalise(frame, LEAN_TICKS, tz="America/New_York", day=dt.date(2013, 12, 2))
    assert winter["ts"][0] - out["ts"][0] == (56 * 86_400 + 3600) * NS


@pytest.mark.realdata
def test_real_lean_ticks_normalise_into_the_session() -> None:
    path = shared_path("lean", "equity", "usa", "tick", "spy", "20131007_trade.zip")
    with zipfile.ZipFile(path) as z:
        text = z.read(z.namelist()[0])
    frame = pl.read_csv(
        io.BytesIO(text),
        has_header=False,
        new_columns=["ts", "price", "size", "exchange", "condition", "suspicious"],
    )
    out = normalise(frame, LEAN_TICKS, tz="America/New_York", day=dt.date(2013, 10, 7))
    assert out["ts"].is_sorted()
    assert out["ts"].min() >= _utc("2013-10-07T08:00:00+00:00")  # 04:00 New York
    assert out["ts"].max() < _utc("2013-10-08T00:00:00+00:00")  # 20:00 New York
    assert out["price"].min() > 150 and out["price"].max() < 200
