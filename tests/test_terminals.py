"""Bloomberg and LSEG: parsing on constructed messages of the SDKs' documented shapes; the
adapters fail with what to install when the SDK is missing (neither is installed here)."""

from __future__ import annotations

import importlib.util
from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.ingest.terminals import BLPAPI_HINT, BloombergMarketData, LSEGPricing, SdkMissing
from mdstream.providers import bloomberg, lseg

T = datetime(2024, 7, 1, 13, 30, 1, 500_000, tzinfo=UTC)
T_NS = int(T.timestamp()) * 10**9 + 500_000_000


def test_bloomberg_trade_quote_summary_and_unknown():
    trade = bloomberg.market_data(
        "IBM US Equity",
        {
            "MKTDATA_EVENT_TYPE": "TRADE",
            "MKTDATA_EVENT_SUBTYPE": "NEW",
            "LAST_TRADE": 175.5,
            "SIZE_LAST_TRADE": 200,
            "TRADE_UPDATE_STAMP_RT": T,
        },
        received_ns=T_NS + 9,
    )
    tick = trade.ticks[0]
    assert (tick.symbol, tick.tick["kind"], tick.tick["price"], tick.tick["volume"]) == (
        "IBM",
        "TRADE",
        175.5,
        200.0,
    )
    assert (tick.tick["timestamp"], tick.tick["provider_timestamp"]) == (T_NS, T_NS + 9)
    quote = bloomberg.market_data(
        "IBM US Equity",
        {"MKTDATA_EVENT_TYPE": "QUOTE", "BID": 175.4, "ASK": 175.6, "ASK_UPDATE_STAMP_RT": T},
        received_ns=1,
    )
    assert (quote.ticks[0].tick["bid"], quote.ticks[0].tick["timestamp"]) == (175.4, T_NS)
    summary = bloomberg.market_data("IBM US Equity", {"MKTDATA_EVENT_TYPE": "SUMMARY"}, 1)
    assert summary.control and not summary.ticks and not summary.errors
    weird = bloomberg.market_data(
        "IBM US Equity", {"MKTDATA_EVENT_TYPE": "TRADE", "LAST_TRADE": "n/a"}, 1
    )
    assert "without a price" in weird.errors[0].reason
    assert bloomberg.market_data("X", {"MKTDATA_EVENT_TYPE": "NOPE"}, 1).errors


def test_bloomberg_intraday_and_historical():
    r = bloomberg.intraday_bars(
        "IBM US Equity",
        {
            "barData": {
                "barTickData": [
                    {
                        "time": T.replace(second=0, microsecond=0),
                        "open": 1.0,
                        "high": 2.0,
                        "low": 0.5,
                        "close": 1.5,
                        "volume": 10,
                        "numEvents": 3,
                        "value": 15.0,
                    },
                    {
                        "time": datetime(2024, 7, 1, 13, 31),
                        "open": 1,
                        "high": 1,
                        "low": 1,
                        "close": 1,
                        "volume": 1,
                    },  # naive time: rejected, not guessed
                ]
            }
        },
        "1m",
    )
    assert len(r.bars) == 1 and r.bars[0].vwap == 1.5 and r.bars[0].trade_count == 3
    assert len(r.errors) == 1
    h = bloomberg.historical_bars(
        {
            "securityData": {
                "security": "IBM US Equity",
                "fieldData": [
                    {
                        "date": date(2024, 7, 1),
                        "PX_OPEN": 1,
                        "PX_HIGH": 2,
                        "PX_LOW": 0.5,
                        "PX_LAST": 1.5,
                        "PX_VOLUME": 1000,
                    }
                ],
            }
        }
    )
    assert h.bars[0].start_ns == int(datetime(2024, 7, 1, 4, tzinfo=UTC).timestamp()) * 10**9
    err = bloomberg.historical_bars(
        {"securityData": {"security": "BAD US Equity", "securityError": {"message": "Unknown"}}}
    )
    assert "BAD US Equity" in err.errors[0].reason


def test_lseg_updates_and_history():
    r = lseg.pricing_update(
        "IBM.N",
        {
            "TRDPRC_1": 175.5,
            "TRDVOL_1": 100,
            "SALTIM_MS": 48601500,
            "TRADE_DATE": "2024-07-01",
            "BID": 175.4,
            "ASK": 175.6,
        },
        received_ns=T_NS + 7,
    )
    trade, quote = r.ticks
    assert (trade.symbol, trade.tick["timestamp"], trade.tick["price"]) == ("IBM", T_NS, 175.5)
    assert (quote.tick["bid"], quote.tick["ask"], quote.tick["timestamp"]) == (
        175.4,
        175.6,
        T_NS + 7,
    )
    other = lseg.pricing_update("IBM.N", {"NETCHNG_1": 0.3}, received_ns=1)
    assert other.control and not other.errors
    bad = lseg.pricing_update("IBM.N", {"BID": "abc"}, received_ns=1)
    assert "unreadable" in bad.errors[0].reason
    h = lseg.history_rows(
        "IBM.N",
        [
            (
                datetime(2024, 7, 1, 13, 30),
                {"OPEN": 1, "HIGH": 2, "LOW": 0.5, "CLOSE": 1.5, "VOLUME": 9},
            ),
            (datetime(2024, 7, 1, 13, 31), {"OPEN": None, "HIGH": 2, "LOW": 0.5, "CLOSE": 1.5}),
        ],
        "1m",
    )
    assert len(h.bars) == 1 and h.bars[0].close == 1.5 and len(h.errors) == 1


class Sink:
    async def submit(self, tick):
        raise AssertionError

    async def dead_letter(self, error):
        raise AssertionError


@pytest.mark.skipif(importlib.util.find_spec("blpapi") is not None, reason="blpapi installed")
def test_bloomberg_without_sdk_says_what_to_install():
    with pytest.raises(SdkMissing) as info:
        BloombergMarketData(Sink())
    assert str(info.value) == BLPAPI_HINT and "blpapi" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("lseg") is not None, reason="lseg-data installed")
def test_lseg_without_sdk_says_what_to_install():
    with pytest.raises(SdkMissing, match="pip install lseg-data"):
        LSEGPricing(Sink())


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.integers(),
    st.text(max_size=8),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
)
_fields = [
    "MKTDATA_EVENT_TYPE",
    "LAST_TRADE",
    "LAST_PRICE",
    "SIZE_LAST_TRADE",
    "BID",
    "ASK",
    "TRADE_UPDATE_STAMP_RT",
    "BID_UPDATE_STAMP_RT",
    "TRDPRC_1",
    "TRDVOL_1",
    "SALTIM_MS",
    "TRADE_DATE",
    "OPEN",
    "HIGH",
    "LOW",
    "CLOSE",
    "VOLUME",
    "time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "numEvents",
    "value",
]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_fields) | st.text(max_size=6), _values, max_size=8),
    st.sampled_from(["TRADE", "QUOTE", "SUMMARY", None, "X"]),
)
def test_sdk_parsers_never_raise(fields, event):
    """Whatever fields arrive, the parsers give ticks/bars/errors/control, never an exception."""
    fields = dict(fields)
    if event is not None:
        fields["MKTDATA_EVENT_TYPE"] = event
    for r in (
        bloomberg.market_data("IBM US Equity", fields, 1),
        bloomberg.intraday_bars("IBM US Equity", {"barData": {"barTickData": [fields]}}, "1m"),
        bloomberg.historical_bars(
            {"securityData": {"security": "IBM US Equity", "fieldData": [fields]}}
        ),
        lseg.pricing_update("IBM.N", fields, 1),
        lseg.history_rows("IBM.N", [(fields.get("time"), fields)], "1m"),
    ):
        assert r.ticks or r.bars or r.errors or r.control
        for t in r.ticks:
            assert (
                t.tick["price"] is not None
                or t.tick["bid"] is not None
                or (t.tick["ask"] is not None)
            )
