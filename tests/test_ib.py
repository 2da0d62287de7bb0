"""Interactive Brokers parsing on constructed ib_async objects (no TWS is available here), and the
market-data adapter's tick handling and historical source pacing with a stand-in IB client."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ib_async import BarData, Stock, Ticker

from mdstream.ingest.ib import IBHistoricalSource, IBMarketData, ib_end_datetime
from mdstream.ingest.ratelimit import PROVIDER_LIMITS, TokenBucketLimiter
from mdstream.providers.ib import historical_bars, ticker_ticks

T0 = datetime(2024, 7, 1, 13, 30, 0, 250_000, tzinfo=UTC)
NS0 = int(T0.timestamp()) * 10**9 + 250_000_000


def ticker(**fields) -> Ticker:
    """A Ticker as ib_async fills it: created empty (prices −1), then updated field by field."""
    t = Ticker(contract=Stock("AAPL", "SMART", "USD"), time=T0)
    for name, v in fields.items():
        setattr(t, name, v)
    return t


def test_snapshot_quote_and_trade():
    r = ticker_ticks(
        ticker(bid=228.1, ask=228.2, bidSize=3, askSize=4, last=228.15, lastSize=100),
        received_ns=NS0 + 5,
    )
    quote, trade = r.ticks
    assert (quote.tick["kind"], quote.tick["bid"], quote.tick["ask"]) == ("QUOTE", 228.1, 228.2)
    assert (trade.tick["kind"], trade.tick["price"], trade.tick["volume"]) == (
        "TRADE",
        228.15,
        100.0,
    )
    assert trade.tick["timestamp"] == NS0 and trade.tick["provider_timestamp"] == NS0 + 5


def test_minus_one_means_no_data():
    assert math.isnan(ticker().bid)  # ib_async leaves unset fields NaN; TWS sends −1
    r = ticker_ticks(ticker(bid=-1, ask=228.2, last=math.nan), received_ns=1)
    assert len(r.ticks) == 1 and r.ticks[0].tick["bid"] is None and r.ticks[0].tick["ask"] == 228.2
    r = ticker_ticks(ticker(bid=-1.0, ask=-1.0, last=-1.0), received_ns=1)
    assert not r.ticks and "no data" in r.errors[0].reason
    r = ticker_ticks(Ticker(contract=None), received_ns=1)
    assert "contract" in r.errors[0].reason


def test_historical_bars_intraday_daily_and_sentinels():
    bars = [
        BarData(
            date=T0.replace(microsecond=0),
            open=1.0,
            high=2.0,
            low=0.5,
            close=1.5,
            volume=100,
            average=1.2,
            barCount=7,
        ),
        BarData(
            date=T0.replace(microsecond=0) + timedelta(minutes=1),
            open=-1,
            high=2,
            low=1,
            close=1.5,
            volume=1,
            average=1.0,
            barCount=1,
        ),
        BarData(
            date=T0.replace(microsecond=0) + timedelta(minutes=2),
            open=1.0,
            high=1.0,
            low=1.0,
            close=1.0,
            volume=-1,
            average=-1,
            barCount=-1,
        ),
    ]
    r = historical_bars(bars, "EURUSD", "1 min")
    assert [b.start_ns for b in r.bars] == [NS0 - 250_000_000, NS0 - 250_000_000 + 120 * 10**9]
    assert (r.bars[0].trade_count, r.bars[0].vwap) == (7, 1.2)
    assert (r.bars[1].volume, r.bars[1].vwap, r.bars[1].trade_count) == (0.0, None, None)
    assert len(r.errors) == 1 and "no price" in r.errors[0].reason
    daily = historical_bars(
        [
            BarData(
                date=date(2024, 7, 1),
                open=1,
                high=1,
                low=1,
                close=1,
                volume=5,
                average=1,
                barCount=1,
            )
        ],
        "AAPL",
        "1 day",
    )
    assert daily.bars[0].interval == "1d"
    assert daily.bars[0].start_ns == int(datetime(2024, 7, 1, 4, tzinfo=UTC).timestamp()) * 10**9
    assert historical_bars([], "AAPL", "3 fortnights").errors


class Sink:
    def __init__(self):
        self.ticks, self.dead = [], []

    async def submit(self, tick):
        self.ticks.append(tick)

    async def dead_letter(self, error):
        self.dead.append(error)


async def test_adapter_sends_a_repeated_trade_once():
    sink = Sink()
    adapter = IBMarketData(sink)
    snap = ticker(bid=1.0, ask=1.1, last=1.05, lastSize=10)
    await adapter.on_tickers([snap])
    await adapter.on_tickers([snap])  # the next snapshot repeats the same last trade
    await adapter.on_tickers([ticker(bid=-1, ask=-1, last=-1)])
    kinds = [t.tick["kind"] for t in sink.ticks]
    assert kinds == ["QUOTE", "TRADE", "QUOTE"]
    assert len(sink.dead) == 1 and adapter.health().errors == 1


class FakeIB:
    """Stands in for ib_async.IB: records the requests, answers with bars."""

    def __init__(self):
        self.requests = []

    def isConnected(self):
        return True

    async def reqHistoricalDataAsync(self, contract, **kw):
        self.requests.append((contract.symbol, kw))
        end = datetime.strptime(kw["endDateTime"], "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
        return [
            BarData(
                date=end - timedelta(minutes=m),
                open=1,
                high=1,
                low=1,
                close=1,
                volume=1,
                average=1,
                barCount=1,
            )
            for m in range(1, 4)
        ]


async def test_historical_source_requests_and_pacing():
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

        async def sleep(self, s):
            self.now += s

    clock = Clock()
    limiter = TokenBucketLimiter("ib", PROVIDER_LIMITS["ib"], clock=clock, sleep=clock.sleep)
    fake = FakeIB()
    source = IBHistoricalSource("1m", limiter=limiter, ib=fake)
    end = datetime(2024, 7, 2, tzinfo=UTC)
    r = await source.fetch("AAPL", end - timedelta(minutes=2), end, "1m")
    assert len(r.bars) == 2  # the bar before `start` is cut off
    await source.fetch("AAPL", end - timedelta(minutes=2), end, "1m")  # identical request
    assert clock.now >= 15.0
    assert fake.requests[0][1]["endDateTime"] == ib_end_datetime(end) == "20240702-00:00:00"
    assert fake.requests[0][1]["formatDate"] == 2
    with pytest.raises(ValueError):
        await source.fetch("AAPL", end - timedelta(minutes=2), end, "1d")


_num = st.one_of(
    st.none(),
    st.just(-1),
    st.just(-1.0),
    st.floats(allow_nan=True),
    st.integers(-5, 10**6),
    st.text(max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(_num, _num, _num, _num, st.sampled_from([T0, None, datetime(2024, 7, 1, 13, 30)]))
def test_ticker_fuzz_never_raises_and_never_emits_sentinels(bid, ask, last, size, when):
    t = ticker(bid=bid, ask=ask, last=last, lastSize=size)
    t.time = when
    r = ticker_ticks(t, received_ns=1)
    assert r.ticks or r.errors
    for tk in r.ticks:
        for k in ("price", "bid", "ask"):
            assert tk.tick[k] is None or (math.isfinite(tk.tick[k]) and tk.tick[k] != -1)
