"""File-format readers and event converters: hand-built frames, then the real files."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from mdstream.core.corporate_actions import ActionKind
from mdstream.ingest.datasets import (
    lean_factor_file_events,
    quandl_events,
    read_lean_daily,
    read_lean_factor_file,
    read_quandl_archive,
    read_yahoo_csv,
    round_dividend,
)
from tests.shared_data import shared_path


def test_round_dividend_snaps_only_within_the_resolution() -> None:
    assert round_dividend(2.649939, 7e-5) == 2.65
    assert round_dividend(0.205002, 1e-5) == 0.205  # half-cent grid
    assert round_dividend(1.435404, 3e-5) == 1.435404  # a six-decimal ETF distribution
    assert round_dividend(2.649939, 1e-6) == 2.649939  # the file cannot support rounding


def test_lean_factor_file_events_from_a_hand_built_file() -> None:
    # Rows: start sentinel; 2024-01-04 (ref 50) then a $1 dividend: pf 0.98 → 1.0;
    # 2024-01-08 (ref 49.5) then a 2:1 split printed with 6 significant digits: sf 0.5 → 1.
    factor_file = pl.DataFrame(
        {
            "date": [date(2024, 1, 2), date(2024, 1, 4), date(2024, 1, 8), date(2050, 12, 31)],
            "price_factor": [0.98, 0.98, 1.0, 1.0],
            "split_factor": [0.5, 0.5, 0.5, 1.0],
            "reference_price": [1.0, 50.0, 49.5, 0.0],
        }
    )
    sessions = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4), date(2024, 1, 8)]
    events = lean_factor_file_events(factor_file, sessions, instrument_id="X", symbol="X")
    dividend, split = events
    # D = 50 * (1 - 0.98 / 1.0) = 1.0; ex-date = the session after 2024-01-04 = 2024-01-08
    assert dividend.kind is ActionKind.CASH_DIVIDEND and dividend.amount == pytest.approx(1.0)
    assert dividend.ex_date == date(2024, 1, 8)
    # sessions end on 2024-01-08, so the split's ex-date is the next weekday, Tuesday 01-09
    assert split.kind is ActionKind.STOCK_SPLIT and split.ratio == 2.0
    assert split.ex_date == date(2024, 1, 9)


def test_quandl_events_from_a_hand_built_frame() -> None:
    frame = pl.DataFrame(
        {
            "ticker": ["X", "X", "X"],
            "date": [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)],
            "ex_dividend": [0.0, 0.5, 0.0],
            "split_ratio": [1.0, 1.0, 0.1],
        }
    )
    events = quandl_events(frame, instrument_id="X")
    assert [(e.kind, e.ex_date) for e in events] == [
        (ActionKind.CASH_DIVIDEND, date(2024, 1, 3)),
        (ActionKind.REVERSE_SPLIT, date(2024, 1, 4)),
    ]


@pytest.mark.realdata
def test_readers_on_the_real_files() -> None:
    daily = read_lean_daily(shared_path("lean", "equity", "usa", "daily", "aapl.zip"))
    first = daily.row(0, named=True)
    # 19980102 00:00,136300,162500,135000,162500,6315000
    assert first == {
        "date": date(1998, 1, 2),
        "open": 13.63,
        "high": 16.25,
        "low": 13.5,
        "close": 16.25,
        "volume": 6315000,
    }
    # correctly rounded scaling: 4638400 / 10000 is the double nearest 463.84
    assert daily.filter(pl.col("date") == date(2013, 5, 8)).item(0, "close") == 463.84
    factors = read_lean_factor_file(
        shared_path("lean", "equity", "usa", "factor_files", "aapl.csv")
    )
    assert factors.row(-1) == (date(2050, 12, 31), 1.0, 1.0, 0.0)
    quandl = read_quandl_archive(shared_path("zipline", "QUANDL_ARCHIVE.zip"), ["AAPL", "MSFT"])
    assert quandl.height == 504 and "ex_dividend" in quandl.columns
    yahoo = read_yahoo_csv(shared_path("yahoo", "AAPL.csv"))
    assert yahoo.columns == ["date", "open", "high", "low", "close", "volume"]
    assert yahoo.get_column("date").dt.year().unique().to_list() == [2014]
    print(
        f"\nlean aapl {daily.height} bars, factor rows {factors.height}, quandl {quandl.height}, "
        f"yahoo {yahoo.height}"
    )
