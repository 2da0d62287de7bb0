"""Per-tick validation: each rule, its precedence, and a property test against a restatement."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.core.batch import TickColumns
from mdstream.core.validation import ValidationRules, validate

S = 1_000_000_000
PUBLISHED = 1_764_000_000 * S
RULES = ValidationRules()  # 5 s max future

TS_MISSING = "timestamp missing or before 1970"
TS_FUTURE = "timestamp in the future"
PRICE_NAN = "trade price missing or not finite"
PRICE_NONPOS = "trade price not positive (sentinel or bad print)"
SIZE_NAN = "trade size missing or not finite"
SIZE_NONPOS = "trade size not positive"
QUOTE_MISSING = "quote side missing"
QUOTE_NONPOS = "quote price not positive"
CROSSED = "crossed quote (bid above ask)"
PRICE_SENTINEL = "trade price is a sentinel value"
SIZE_RANGE = "trade size out of range"
QUOTE_SENTINEL = "quote price is a sentinel value"


def trade(
    price: float | None = 100.0, volume: float | None = 10.0, ts: int = PUBLISHED - S
) -> dict[str, Any]:
    return {
        "kind": "TRADE",
        "timestamp": ts,
        "provider_timestamp": ts + 1,
        "price": price,
        "volume": volume,
        "bid": None,
        "ask": None,
    }


def quote(
    bid: float | None = 99.9, ask: float | None = 100.1, ts: int = PUBLISHED - S
) -> dict[str, Any]:
    return {
        "kind": "QUOTE",
        "timestamp": ts,
        "provider_timestamp": ts + 1,
        "price": None,
        "volume": None,
        "bid": bid,
        "ask": ask,
    }


def columns(ticks: Sequence[Mapping[str, Any]], published: int = PUBLISHED) -> TickColumns:
    return TickColumns.from_record(
        {
            "batchId": "00000000-0000-0000-0000-000000000001",
            "timestamp": published,
            "source": "alpaca",
            "instrument": {"symbol": "AAPL", "exchange": "XNAS", "isin": None},
            "ticks": list(ticks),
        }
    )


def reasons(*ticks: Mapping[str, Any], rules: ValidationRules = RULES) -> list[str | None]:
    return validate(columns(ticks), rules)


def test_valid_ticks_pass() -> None:
    ticks = [
        trade(),
        trade(price=0.0001, volume=0.5),  # fractional shares, sub-penny prints
        quote(),
        quote(bid=100.0, ask=100.0),  # a locked quote is not crossed
        trade(ts=PUBLISHED + RULES.max_future_ns),  # exactly at the future bound
        trade(ts=1),
    ]
    assert reasons(*ticks) == [None] * len(ticks)


def test_empty_batch() -> None:
    assert reasons() == []


@pytest.mark.parametrize(
    ("tick", "reason"),
    [
        (trade(price=float("nan")), PRICE_NAN),
        (trade(price=None), PRICE_NAN),
        (trade(price=float("inf")), PRICE_NAN),
        (trade(price=float("-inf")), PRICE_NAN),
        (trade(price=-1.0), PRICE_NONPOS),  # the "no data" sentinel
        (trade(price=0.0), PRICE_NONPOS),
        (trade(price=-0.0), PRICE_NONPOS),
        (trade(volume=0.0), SIZE_NONPOS),
        (trade(volume=-5.0), SIZE_NONPOS),
        (trade(volume=None), SIZE_NAN),
        (trade(volume=float("inf")), SIZE_NAN),
        (quote(bid=100.2, ask=100.1), CROSSED),
        (trade(price=999_999.99), PRICE_SENTINEL),
        (trade(price=2_147_483_647.0), PRICE_SENTINEL),
        (trade(volume=RULES.max_trade_size + 1), SIZE_RANGE),
        (quote(bid=99.0, ask=999_999.0), QUOTE_SENTINEL),
        (quote(bid=None), QUOTE_MISSING),
        (quote(ask=None), QUOTE_MISSING),
        (quote(ask=float("nan")), QUOTE_MISSING),
        (quote(bid=float("inf")), QUOTE_MISSING),
        (quote(bid=0.0), QUOTE_NONPOS),
        (quote(bid=-1.0, ask=-0.5), QUOTE_NONPOS),
        (trade(ts=0), TS_MISSING),
        (trade(ts=-5 * S), TS_MISSING),
        (quote(ts=0), TS_MISSING),
        (trade(ts=PUBLISHED + RULES.max_future_ns + 1), TS_FUTURE),
        (quote(ts=PUBLISHED + 60 * S), TS_FUTURE),
    ],
)
def test_each_rule(tick: dict[str, Any], reason: str) -> None:
    assert reasons(tick) == [reason]


def test_first_matching_reason_wins() -> None:
    # Timestamp before price, price before size, side missing before crossed/non-positive.
    assert reasons(
        trade(price=-1.0, volume=0.0, ts=0),
        trade(price=-1.0, volume=0.0, ts=PUBLISHED + 10 * S),
        trade(price=float("nan"), volume=0.0),
        trade(price=-1.0, volume=None),
        trade(volume=float("nan")),
        quote(bid=None, ask=-1.0),
        quote(bid=-2.0, ask=-3.0),  # both non-positive and crossed
    ) == [TS_MISSING, TS_FUTURE, PRICE_NAN, PRICE_NONPOS, SIZE_NAN, QUOTE_MISSING, QUOTE_NONPOS]


def test_trade_rules_ignore_quote_fields_and_vice_versa() -> None:
    # A trade carrying a crossed quote and a quote carrying a bad price are both fine.
    t = trade()
    t.update(bid=101.0, ask=100.0)
    q = quote()
    q.update(price=-1.0, volume=0.0)
    assert reasons(t, q) == [None, None]


def test_mixed_batch_flags_only_the_bad_ticks_in_place() -> None:
    ticks = [
        trade(),
        trade(price=-1.0),
        quote(),
        quote(bid=101.0, ask=100.0),
        trade(volume=0.0),
        trade(price=228.51, volume=3.0),
    ]
    assert reasons(*ticks) == [None, PRICE_NONPOS, None, CROSSED, SIZE_NONPOS, None]


def test_max_future_is_configurable_and_relative_to_the_batch() -> None:
    tick = trade(ts=PUBLISHED + 2 * S)
    assert reasons(tick) == [None]
    assert reasons(tick, rules=ValidationRules(max_future_ns=S)) == [TS_FUTURE]
    # Judged against the batch's own publish time, not a wall clock.
    assert validate(columns([tick], published=PUBLISHED - 10 * S), RULES) == [TS_FUTURE]


# --------------------------------------------------------------------------------------------
# property: never raises; flags exactly the ticks that break the rules restated here


def expected_reason(tick: Mapping[str, Any], published: int, max_future: int) -> str | None:
    """The rules, written independently of mdstream, one tick at a time."""

    def finite(x: float | None) -> bool:
        return x is not None and math.isfinite(x)

    ts = tick["timestamp"]
    if ts <= 0:
        return TS_MISSING
    if ts > published + max_future:
        return TS_FUTURE
    if tick["kind"] == "TRADE":
        price, volume = tick["price"], tick["volume"]
        if not finite(price):
            return PRICE_NAN
        if price <= 0:
            return PRICE_NONPOS
        if price in RULES.sentinels:
            return PRICE_SENTINEL
        if not finite(volume):
            return SIZE_NAN
        if volume <= 0:
            return SIZE_NONPOS
        if volume > RULES.max_trade_size:
            return SIZE_RANGE
        return None
    bid, ask = tick["bid"], tick["ask"]
    if not (finite(bid) and finite(ask)):
        return QUOTE_MISSING
    if bid <= 0 or ask <= 0:
        return QUOTE_NONPOS
    if bid in RULES.sentinels or ask in RULES.sentinels:
        return QUOTE_SENTINEL
    if bid > ask:
        return CROSSED
    return None


_floats = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1.0, 0.0, -0.0, 100.0, 100.01, 1e-300, 5e-324, 999_999.0, 6e7]),
)
_timestamps = st.one_of(
    st.integers(min_value=-(2**62), max_value=2**62),
    st.integers(min_value=PUBLISHED - 10 * S, max_value=PUBLISHED + 10 * S),
    st.sampled_from([0, 1, -1, PUBLISHED + RULES.max_future_ns]),
)
_ticks = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["TRADE", "QUOTE"]),
        "timestamp": _timestamps,
        "provider_timestamp": st.integers(min_value=0, max_value=2**62),
        "price": _floats,
        "volume": _floats,
        "bid": _floats,
        "ask": _floats,
    }
)


@settings(max_examples=200, deadline=None)
@given(
    ticks=st.lists(_ticks, max_size=12),
    max_future=st.integers(min_value=0, max_value=60 * S),
)
def test_validate_flags_exactly_the_rule_breakers(
    ticks: list[dict[str, Any]], max_future: int
) -> None:
    got = validate(columns(ticks), ValidationRules(max_future_ns=max_future))
    assert got == [expected_reason(t, PUBLISHED, max_future) for t in ticks]
