"""The batch bar core: conventions, empty intervals, quote bars, session bars and roll-ups."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.core.bars import (
    BarConventions,
    accumulate,
    close_due,
    quote_bars,
    roll_up,
    session_bars,
    trade_bars,
)

S = 1_000_000_000
M = 60 * S
H = 60 * M
T = 1_764_000_000 * S  # a minute boundary


def _tape(rows: list[tuple[int, float, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["ts", "price", "size"], orient="row")


TAPE = _tape(
    [
        (T + 10 * S, 10.0, 1),
        (T + M, 11.0, 2),  # exactly on the boundary
        (T + M + 5 * S, 12.0, 3),
        (T + 4 * M + 1, 9.0, 4),  # two empty minutes before it
    ]
)


def test_defaults_are_left_closed_stamped_at_start_no_empty_bars() -> None:
    bars = trade_bars(TAPE, "1m")
    assert bars["ts"].to_list() == [T, T + M, T + 4 * M]
    assert bars["window_end"].to_list() == [T + M, T + 2 * M, T + 5 * M]
    assert bars["open"].to_list() == [10.0, 11.0, 9.0]
    assert bars["volume"].to_list() == [1, 5, 4]
    assert bars["vwap"][1] == pytest.approx((11 * 2 + 12 * 3) / 5)


def test_right_closed_puts_the_boundary_tick_in_the_window_it_ends() -> None:
    bars = trade_bars(TAPE, "1m", BarConventions(closed="right", label="end"))
    assert bars["window_start"].to_list() == [T, T + M, T + 4 * M]
    assert bars["ts"].to_list() == [T + M, T + 2 * M, T + 5 * M]  # stamped at the end
    assert bars["close"].to_list() == [11.0, 12.0, 9.0]
    assert bars["trade_count"].to_list() == [2, 1, 1]


def test_empty_intervals_carry_the_close_or_give_null_rows() -> None:
    carry = trade_bars(TAPE, "1m", BarConventions(empty="carry"))
    assert carry["ts"].to_list() == [T + i * M for i in range(5)]
    flat = carry.row(2, named=True)
    assert (flat["open"], flat["high"], flat["low"], flat["close"]) == (12.0,) * 4
    assert (flat["volume"], flat["trade_count"]) == (0, 0)
    nulls = trade_bars(TAPE, "1m", BarConventions(empty="null"))
    assert nulls.height == 5 and nulls["close"].null_count() == 2


def test_conventions_reject_unknown_values() -> None:
    with pytest.raises(ValueError, match="closed"):
        BarConventions(closed="both")


def test_equal_timestamps_keep_arrival_order_for_open_and_close() -> None:
    tape = _tape([(T + 5, 2.0, 1), (T + 1, 1.0, 1), (T + 5, 3.0, 1), (T + 1, 1.5, 1)])
    bar = trade_bars(tape, "1s").row(0, named=True)
    assert (bar["open"], bar["close"]) == (1.0, 3.0)


def test_quote_bars_take_bid_and_ask_ohlc_and_last_sizes() -> None:
    quotes = pl.DataFrame(
        {
            "ts": [T + 1, T + 2, T + 3, T + S + 1],
            "bid": [10.0, 10.2, 9.9, 10.1],
            "ask": [10.1, 10.3, 10.0, 10.2],
            "bid_size": [100, 200, 300, 400],
            "ask_size": [5, 6, 7, 8],
        }
    )
    bars = quote_bars(quotes, "1s")
    first = bars.row(0, named=True)
    assert (first["bid_open"], first["bid_high"], first["bid_low"], first["bid_close"]) == (
        10.0,
        10.2,
        9.9,
        9.9,
    )
    assert (first["ask_high"], first["ask_close"], first["bid_size"], first["ask_size"]) == (
        10.3,
        10.0,
        300,
        7,
    )
    assert bars.height == 2


def test_session_bars_keep_only_trades_inside_each_session() -> None:
    opens = np.array([T, T + 24 * H], dtype=np.int64)
    closes = opens + 6 * H + 30 * M
    tape = _tape(
        [
            (T - 1, 1.0, 100),  # pre-market: not in the session bar
            (T, 2.0, 1),
            (T + 6 * H + 30 * M - 1, 3.0, 1),
            (T + 6 * H + 30 * M, 4.0, 100),  # at the close: post-market
            (T + 25 * H, 5.0, 2),
        ]
    )
    bars = session_bars(tape, opens, closes, ["d1", "d2"])
    assert bars["session"].to_list() == ["d1", "d2"]
    assert bars["volume"].to_list() == [2, 2]
    assert bars["close"].to_list() == [3.0, 5.0]
    assert bars["window_end"].to_list() == closes.tolist()


ticks = st.lists(
    st.tuples(
        st.integers(0, 3 * H),
        st.integers(1, 5000).map(lambda c: c / 100),
        st.integers(1, 500),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(ticks)
def test_roll_ups_equal_direct_aggregation(rows: list[tuple[int, float, int]]) -> None:
    tape = _tape([(T + t, p, v) for t, p, v in rows])
    for fine, coarse in (("1s", "1m"), ("1m", "1h"), ("1s", "1h")):
        rolled = roll_up(trade_bars(tape, fine), coarse)
        direct = trade_bars(tape, coarse)
        exact = ["ts", "window_end", "open", "high", "low", "close", "volume", "trade_count"]
        assert rolled.select(exact).to_dicts() == direct.select(exact).to_dicts()
        assert np.allclose(rolled["vwap"].to_numpy(), direct["vwap"].to_numpy(), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(ticks)
def test_streaming_core_agrees_with_the_batch_core(rows: list[tuple[int, float, int]]) -> None:
    ts = np.array([T + t for t, _, _ in rows], dtype=np.int64)
    price = np.array([p for _, p, _ in rows])
    size = np.array([v for _, _, v in rows], dtype=np.float64)
    widths = {"1s": S, "1m": M}
    open_bars: dict = {}
    for chunk in np.array_split(np.arange(len(ts)), 3):  # arrival in three batches
        accumulate(open_bars, widths, "p", ts[chunk], price[chunk], size[chunk])
    final = close_due(open_bars, widths, int(ts.max()) + 2 * H, 0, ["p"])
    direct = pl.concat(
        [trade_bars(_tape(list(zip(ts, price, size, strict=True))), label) for label in widths]
    )
    got = [(b.window_start, b.open, b.high, b.low, b.close, b.volume, b.trade_count) for b in final]
    cols = ["window_start", "open", "high", "low", "close", "volume", "trade_count"]
    assert sorted(got) == sorted(direct.select(cols).rows())
