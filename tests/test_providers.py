"""Provider parsers on recorded frames (hand-written from the providers' docs) and under fuzzing."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdstream.core.contracts import RAW_BATCH, ContractSet, load_schema_text
from mdstream.providers import alpaca, finnhub, polygon
from mdstream.providers.base import ParseResult

FRAMES = Path(__file__).parent / "fixtures" / "frames"
CONTRACTS = ContractSet.load()
#: The row form of a raw batch (what producers build) is version 1's record shape.
ROW_FORM = fastavro.parse_schema(json.loads(load_schema_text(f"{RAW_BATCH}.v1")))


def frame(provider: str, name: str) -> bytes:
    return (FRAMES / provider / f"{name}.json").read_bytes().strip()


def assert_valid_raw_ticks(result: ParseResult) -> None:
    """Every tick fits the Avro RawTick contract, survives a round trip, and is usable."""
    for pt in result.ticks:
        batch = {
            "batchId": "00000000-0000-4000-8000-000000000000",
            "timestamp": pt.tick["timestamp"],
            "source": pt.provider,
            "instrument": {"symbol": pt.symbol, "exchange": None, "isin": None},
            "ticks": [pt.tick],
        }
        assert fastavro.validate(batch, ROW_FORM, raise_errors=True)
        assert CONTRACTS.decode(CONTRACTS.encode(RAW_BATCH, batch))[1] == batch
        tick = pt.tick
        assert 946_684_800 * 10**9 <= tick["timestamp"] < 4_102_444_800 * 10**9
        is_trade = tick["kind"] == "TRADE"
        values = [tick["price"], tick["volume"]] if is_trade else [tick["bid"], tick["ask"]]
        assert all(math.isfinite(v) and v > 0 for v in values), tick
    for err in result.errors:
        assert err.reason and isinstance(err.payload, bytes)


# --- Finnhub -------------------------------------------------------------------------------


def test_finnhub_trades_ms_times_and_conditions():
    r = finnhub.parse_ws(frame("finnhub", "trades"))
    assert not r.errors
    assert [(t.symbol, t.tick["price"], t.tick["volume"]) for t in r.ticks] == [
        ("TSLA", 122.1, 1.0),
        ("AAPL", 129.575, 10.0),
        ("BINANCE:BTCUSDT", 16830.5, 0.0012),
    ]
    first = r.ticks[0].tick
    assert first["timestamp"] == 1672348887195 * 1_000_000
    assert first["kind"] == "TRADE" and first["conditions"] == "1,8,24,12"
    assert r.ticks[2].tick["conditions"] is None
    assert_valid_raw_ticks(r)


def test_finnhub_bad_elements_become_errors_and_the_good_one_survives():
    r = finnhub.parse_ws(frame("finnhub", "trades_with_bad"))
    assert [t.tick["price"] for t in r.ticks] == [122.1]
    reasons = [e.reason for e in r.errors]
    assert len(reasons) == 6
    assert "sentinel" in reasons[0]
    assert "v = 0" in reasons[1]
    assert "not a number" in reasons[2]
    assert "missing field 't'" in reasons[3]
    assert "absurd price" in reasons[4]
    assert "outside 2000..2100" in reasons[5]  # seconds sent where ms are documented
    assert json.loads(r.errors[0].payload)["p"] == -1


def test_finnhub_control_frames():
    assert finnhub.parse_ws(frame("finnhub", "ping")).control == [{"type": "ping"}]
    err = finnhub.parse_ws(frame("finnhub", "error"))
    assert err.control == [{"type": "error", "message": "Subscribing to too many symbols"}]
    unknown = finnhub.parse_ws(b'{"type":"news","data":[]}')
    assert "unknown message type 'news'" in unknown.errors[0].reason


def test_finnhub_rest_quote_and_unknown_symbol():
    r = finnhub.parse_quote("AAPL", frame("finnhub", "quote"))
    assert not r.errors and not r.ticks
    snap = r.control[0]
    assert snap["last"] == 261.74 and snap["timestamp"] == 1582641000 * 10**9
    bad = finnhub.parse_quote("NOPE", frame("finnhub", "quote_unknown"))
    assert not bad.control and "no data for 'NOPE'" in bad.errors[0].reason


def test_finnhub_rest_candles_and_no_data():
    r = finnhub.parse_candles("AAPL", "D", frame("finnhub", "candles"))
    assert not r.errors
    assert [(b.start_ns, b.open, b.close, b.volume) for b in r.bars] == [
        (1569297600 * 10**9, 221.03, 217.68, 33463820.0),
        (1569384000 * 10**9, 218.55, 221.03, 24018876.0),
        (1569470400 * 10**9, 220.0, 219.89, 20730608.0),
    ]
    assert {b.interval for b in r.bars} == {"1d"}
    empty = finnhub.parse_candles("AAPL", "D", frame("finnhub", "candles_no_data"))
    assert empty == ParseResult()
    ragged = finnhub.parse_candles(
        "AAPL", "1", b'{"s":"ok","t":[1],"o":[1],"h":[1],"l":[1],"c":[],"v":[1]}'
    )
    assert "different lengths" in ragged.errors[0].reason


# --- Alpaca --------------------------------------------------------------------------------


def test_alpaca_control_messages():
    assert alpaca.parse_ws(frame("alpaca", "connected")).control == [
        {"type": "success", "message": "connected"}
    ]
    sub = alpaca.parse_ws(frame("alpaca", "subscription")).control[0]
    assert sub["type"] == "subscription" and sub["trades"] == ["AAPL"]
    for name, code in (("auth_failed", 402), ("connection_limit", 406), ("symbol_limit", 405)):
        ctl = alpaca.parse_ws(frame("alpaca", name)).control[0]
        assert (ctl["type"], ctl["code"], ctl["fatal"]) == ("error", code, True)


def test_alpaca_trades_quotes_bars_with_nanosecond_times():
    r = alpaca.parse_ws(frame("alpaca", "market"))
    assert not r.errors
    trade, quote = r.ticks
    assert trade.symbol == "AAPL" and trade.tick["sequence"] == 96921
    assert trade.tick["timestamp"] == 1614009104_208_000_000
    assert trade.tick["conditions"] == "@,I"
    assert quote.symbol == "AMD" and quote.tick["kind"] == "QUOTE"
    assert quote.tick["timestamp"] == 1614009105_335_689_322
    assert (quote.tick["bid"], quote.tick["ask"]) == (87.66, 87.68)
    assert [(b.interval, b.trade_count, b.vwap) for b in r.bars] == [
        ("1m", 461, 389.062639),
        ("1m", 463, 389.06),
        ("1d", 350000, 388.2),
    ]
    assert r.bars[0].start_ns == 1614021300 * 10**9
    assert_valid_raw_ticks(r)


def test_alpaca_corrections_and_cancels_are_kept_for_the_dead_letter_topic():
    r = alpaca.parse_ws(frame("alpaca", "correction_cancel"))
    assert not r.ticks and not r.errors
    corr, cancel = r.control
    assert corr["type"] == "correction"
    assert corr["original"] == {"id": 52983525033527, "price": 50.06, "size": 100.0}
    assert corr["corrected"]["price"] == 50.065
    assert cancel["type"] == "cancel" and cancel["id"] == 12345 and cancel["action"] == "C"
    for ctl in (corr, cancel):
        assert ctl["unapplied"] and json.loads(ctl["raw"])["S"] == ctl["symbol"]


def test_alpaca_bad_elements():
    r = alpaca.parse_ws(frame("alpaca", "bad_elements"))
    assert [t.tick["sequence"] for t in r.ticks] == [1]
    reasons = [e.reason for e in r.errors]
    assert len(reasons) == 5
    assert "sentinel" in reasons[0]
    assert "not an RFC-3339 time" in reasons[1]
    assert "unknown message type 'zz'" in reasons[2]
    assert "not a JSON object" in reasons[3]
    assert "bool" in reasons[4]
    assert "not a JSON array" in alpaca.parse_ws(b'{"T":"t"}').errors[0].reason


def test_alpaca_rest_bars_pages():
    r, token = alpaca.parse_bars_page("AAPL", "1Min", frame("alpaca", "bars_page1"))
    assert token and not r.errors
    assert [(b.symbol, b.start_ns, b.close, b.trade_count) for b in r.bars] == [
        ("AAPL", 1612195260 * 10**9, 133.5, 50),
        ("AAPL", 1612195320 * 10**9, 133.55, 31),
    ]
    last, token = alpaca.parse_bars_page("AAPL", "1Min", frame("alpaca", "bars_last"))
    assert token is None and len(last.bars) == 1
    empty, token = alpaca.parse_bars_page("AAPL", "1Min", b'{"bars":null,"next_page_token":null}')
    assert empty == ParseResult() and token is None


# --- Polygon -------------------------------------------------------------------------------


def test_polygon_status_handshake():
    assert polygon.parse_ws(frame("polygon", "connected")).control[0]["status"] == "connected"
    ok = polygon.parse_ws(frame("polygon", "auth_success")).control[0]
    assert ok["status"] == "auth_success" and not ok["fatal"]
    failed = polygon.parse_ws(frame("polygon", "auth_failed")).control[0]
    assert failed["status"] == "auth_failed" and failed["fatal"]
    assert len(polygon.parse_ws(frame("polygon", "subscribed")).control) == 2


def test_polygon_trades_quotes_aggregates_ms_and_ns():
    r = polygon.parse_ws(frame("polygon", "market"))
    assert not r.errors
    t1, q, t2 = r.ticks
    assert t1.tick["timestamp"] == 1536036818784 * 10**6 and t1.tick["sequence"] == 3681328
    assert t1.tick["conditions"] == "0,12"
    assert (q.tick["bid"], q.tick["ask"]) == (114.125, 114.128)
    assert t2.tick["timestamp"] == 1700000000123456789  # nanosecond feed
    (bar,) = r.bars
    assert (bar.symbol, bar.interval, bar.start_ns, bar.vwap) == (
        "GTE",
        "1m",
        1610144640000 * 10**6,
        0.4488,
    )
    assert_valid_raw_ticks(r)


def test_polygon_bad_elements():
    r = polygon.parse_ws(frame("polygon", "bad_elements"))
    assert len(r.ticks) == 1
    reasons = [e.reason for e in r.errors]
    assert len(reasons) == 6
    assert "'p' = -1.0 is not a positive price" in reasons[0]
    assert "'bp' = 0.0" in reasons[1]
    assert "unknown event type 'XQ'" in reasons[2]
    assert "inconsistent OHLC" in reasons[3]
    assert "not a number" in reasons[4]
    assert "not a JSON object" in reasons[5]


# --- fuzzing -------------------------------------------------------------------------------

PARSERS = {
    "finnhub": finnhub.parse_ws,
    "alpaca": alpaca.parse_ws,
    "polygon": polygon.parse_ws,
}
SEEDS: dict[str, list[Any]] = {
    "finnhub": json.loads(frame("finnhub", "trades"))["data"],
    "alpaca": json.loads(frame("alpaca", "market")) + json.loads(frame("alpaca", "bad_elements")),
    "polygon": json.loads(frame("polygon", "market")),
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=6)
    ),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, provider: str) -> Any:
    """A documented element with some fields replaced, dropped or added."""
    element = dict(draw(st.sampled_from([s for s in SEEDS[provider] if isinstance(s, dict)])))
    for _ in range(draw(st.integers(0, 3))):
        keys = sorted(element)
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "drop" and keys:
            element.pop(draw(st.sampled_from(keys)))
        elif action == "replace" and keys:
            element[draw(st.sampled_from(keys))] = draw(json_values)
        else:
            element[draw(st.text(max_size=3))] = draw(json_values)
    return element


def wrap(provider: str, elements: list[Any]) -> bytes:
    if provider == "finnhub":
        return json.dumps({"type": "trade", "data": elements}).encode()
    return json.dumps(elements).encode()


@pytest.mark.parametrize("provider", sorted(PARSERS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_near_valid_frames_never_raise_and_ticks_fit_the_contract(provider, data):
    elements = data.draw(st.lists(mutated(provider) | json_values, max_size=6))
    result = PARSERS[provider](wrap(provider, elements))
    assert_valid_raw_ticks(result)
    # Nothing is lost: every element is a tick, a bar, a control record or an error.
    assert len(result.ticks) + len(result.bars) + len(result.control) + len(result.errors) == len(
        elements
    )


@pytest.mark.parametrize("provider", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_arbitrary_bytes_never_raise(provider, raw):
    result = PARSERS[provider](raw)
    assert_valid_raw_ticks(result)


@settings(max_examples=100, deadline=None)
@given(body=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100))
def test_fuzz_rest_bodies_never_raise(body):
    for result in (
        finnhub.parse_quote("AAPL", body),
        finnhub.parse_candles("AAPL", "D", body),
        alpaca.parse_bars_page("AAPL", "1Min", body)[0],
    ):
        assert_valid_raw_ticks(result)
