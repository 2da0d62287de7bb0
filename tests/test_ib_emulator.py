"""The Interactive Brokers adapter against a TWS that speaks the TWS API socket protocol
(`emulators/ib.py`): the real ib_async client, over a real loopback socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from emulators.ib import TwsEmulator
from mdstream.ingest.ib import IBHistoricalSource, IBMarketData, IBRequestError
from mdstream.ingest.ratelimit import LimitSpec, TokenBucketLimiter


class Sink:
    def __init__(self) -> None:
        self.ticks: list = []
        self.dead: list = []

    async def submit(self, tick) -> None:
        self.ticks.append(tick)

    async def dead_letter(self, error) -> None:
        self.dead.append(error)

    def of(self, symbol: str, kind: str) -> list[dict]:
        return [t.tick for t in self.ticks if t.symbol == symbol and t.tick["kind"] == kind]


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def tws(monkeypatch: pytest.MonkeyPatch):
    async with TwsEmulator(symbols=("AAPL", "MSFT"), interval_s=0.03) as server:
        monkeypatch.setenv("MDSTREAM_IB_HOST", "127.0.0.1")
        monkeypatch.setenv("MDSTREAM_IB_PORT", str(server.port))
        monkeypatch.setenv("MDSTREAM_IB_CLIENT_ID", "21")
        yield server


async def _running(adapter: IBMarketData) -> asyncio.Task[None]:
    task = asyncio.ensure_future(adapter.run())
    await until(lambda: adapter.health().connected)
    return task


async def test_market_data_arrives_as_the_quotes_and_trades_tws_sent(tws: TwsEmulator) -> None:
    sink = Sink()
    adapter = IBMarketData(sink, max_backoff_s=0.2)
    await adapter.subscribe(["AAPL", "MSFT"])
    task = await _running(adapter)
    try:
        await until(lambda: len(sink.of("AAPL", "TRADE")) >= 3 and sink.of("MSFT", "TRADE"))
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)

    for symbol in ("AAPL", "MSFT"):
        sent = [s for s in tws.sent if s.symbol == symbol]
        quotes = {(s.bid, s.ask) for s in sent}
        trades = {(s.last, s.last_size, s.last_time_s) for s in sent}
        got_quotes = sink.of(symbol, "QUOTE")
        got_trades = sink.of(symbol, "TRADE")
        assert got_quotes and all((q["bid"], q["ask"]) in quotes for q in got_quotes)
        # every trade is one TWS sent, stamped with the trade's own time (tickString 45) ...
        for t in got_trades:
            assert (t["price"], t["volume"], t["timestamp"] // 10**9) in trades
        # ... and a trade that later snapshots repeat is sent once
        keys = [(t["timestamp"], t["price"], t["volume"]) for t in got_trades]
        assert len(keys) == len(set(keys))
    assert not sink.dead


async def test_unknown_symbol_is_refused_and_the_others_keep_flowing(tws: TwsEmulator) -> None:
    sink = Sink()
    adapter = IBMarketData(sink, max_backoff_s=0.2)
    await adapter.subscribe(["NOSUCH", "AAPL"])
    task = await _running(adapter)
    try:
        await until(lambda: len(sink.of("AAPL", "TRADE")) >= 2)
        assert adapter.health().connected
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
    assert not [t for t in sink.ticks if t.symbol == "NOSUCH"]
    looked_up = sorted(f[4] for msg_id, f in tws.requests if msg_id == 9)  # contract details
    subscribed = [f[4] for msg_id, f in tws.requests if msg_id == 1]  # market data
    assert looked_up == ["AAPL", "NOSUCH"] and subscribed == ["AAPL"]
    assert adapter.health().errors == 1


async def test_tws_restart_reconnects_and_resubscribes(tws: TwsEmulator) -> None:
    sink = Sink()
    adapter = IBMarketData(sink, max_backoff_s=0.2)
    await adapter.subscribe(["AAPL"])
    task = await _running(adapter)
    try:
        await until(lambda: len(sink.of("AAPL", "TRADE")) >= 1)
        await tws.drop_connections()
        await until(lambda: adapter.health().reconnects >= 1 and adapter.health().connected)
        before = len(sink.ticks)
        await until(lambda: len(sink.ticks) > before + 3)
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 10)
    assert tws.connections >= 2
    assert sum(1 for msg_id, _ in tws.requests if msg_id == 1) >= 2  # subscribed again


async def test_a_second_client_with_the_same_id_is_refused(tws: TwsEmulator) -> None:
    from ib_async import IB

    first, second = IB(), IB()
    await first.connectAsync("127.0.0.1", tws.port, clientId=5, timeout=5)
    try:
        with pytest.raises((ConnectionError, TimeoutError, asyncio.TimeoutError)):
            await second.connectAsync("127.0.0.1", tws.port, clientId=5, timeout=2)
        assert first.isConnected()
    finally:
        first.disconnect()
        second.disconnect()


class FakeClock:
    """Time that passes only when someone sleeps: IB's 15 s rule in no time, for the limiter and
    the emulated TWS alike."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def _historical_tws(monkeypatch: pytest.MonkeyPatch, clock: FakeClock):
    server = TwsEmulator(symbols=("AAPL",), clock=clock)
    await server.__aenter__()
    monkeypatch.setenv("MDSTREAM_IB_PORT", str(server.port))
    monkeypatch.setenv("MDSTREAM_IB_CLIENT_ID", "22")
    return server


END = datetime(2024, 7, 1, 15, 0, tzinfo=UTC)


async def test_historical_bars_and_the_pacing_rule_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    server = await _historical_tws(monkeypatch, clock)
    source = IBHistoricalSource(
        "1m", limiter=TokenBucketLimiter("ib", clock=clock, sleep=clock.sleep)
    )
    try:
        first = await source.fetch("AAPL", END - timedelta(hours=1), END, "1m")
        assert [b.start_ns for b in first.bars] == [
            int((END - timedelta(minutes=m)).timestamp()) * 10**9 for m in range(5, 0, -1)
        ]
        assert all(b.interval == "1m" for b in first.bars)
        assert all(
            b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in first.bars
        )
        # The identical request again: the limiter waits out IB's 15 s, so TWS serves it.
        again = await source.fetch("AAPL", END - timedelta(hours=1), END, "1m")
        assert max(clock.slept) >= 15.0 - 1e-9
        assert [b.close for b in again.bars] and len(again.bars) == len(first.bars)
        daily = IBHistoricalSource("1d", limiter=source.limiter, ib=source._ib)
        days = await daily.fetch("AAPL", END - timedelta(days=30), END, "1d")
        assert [b.interval for b in days.bars] == ["1d"] * 5
    finally:
        source._ib.disconnect()
        await server.__aexit__()


async def test_a_refused_historical_request_raises_and_blocks_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without pacing in the limiter, TWS refuses the repeat (error 162): that must not pass for a
    chunk with no bars, and the limiter then keeps off the endpoint for IB's 15 s."""
    clock = FakeClock()
    server = await _historical_tws(monkeypatch, clock)
    limiter = TokenBucketLimiter("ib", LimitSpec(), clock=clock, sleep=clock.sleep)
    source = IBHistoricalSource("1m", limiter=limiter)
    try:
        await source.fetch("AAPL", END - timedelta(hours=1), END, "1m")
        with pytest.raises(IBRequestError, match=r"162.*[Pp]acing") as refused:
            await source.fetch("AAPL", END - timedelta(hours=1), END, "1m")
        assert refused.value.code == 162
        clock.slept.clear()
        third = await source.fetch("AAPL", END - timedelta(hours=1), END, "1m")
        assert sum(clock.slept) >= 15.0 - 1e-9 and third.bars
        with pytest.raises(IBRequestError, match="200"):
            await source.fetch("NOSUCH", END - timedelta(hours=1), END, "1m")
    finally:
        source._ib.disconnect()
        await server.__aexit__()
