"""Failover at the edge on the real Redis (breakers, last prices) with minimal in-test adapters:
primary outage → secondary, all down → stale cache, recovery → trial, hold, switch back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from mdstream.ingest.breaker import BreakerConfig, BreakerState, RedisBreaker
from mdstream.ingest.failover import FailoverConfig, FailoverManager
from mdstream.ingest.last_price import CachingSink, LastPriceCache
from mdstream.ingest.protocols import ConnectionHealth
from mdstream.providers.base import FrameError, ProviderTick

pytestmark = pytest.mark.services


class Sink:
    def __init__(self) -> None:
        self.ticks: list[ProviderTick] = []

    async def submit(self, tick: ProviderTick) -> None:
        self.ticks.append(tick)

    async def dead_letter(self, error: FrameError) -> None:
        raise AssertionError(error)


class FakeAdapter:
    """A StreamAdapter whose connection the test switches on and off; it 'streams' a trade for
    each subscribed symbol whenever the test calls `tick()`."""

    def __init__(self, provider: str, sink) -> None:
        self.provider = provider
        self.sink = sink
        self.connected = True
        self.symbols: set[str] = set()
        self.last_message_ns: int | None = None
        self.messages = 0
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def subscribe(self, symbols: Iterable[str]) -> None:
        symbols = tuple(symbols)
        self.calls.append(("subscribe", symbols))
        if not self.connected:
            raise ConnectionError("not connected")
        self.symbols |= set(symbols)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        symbols = tuple(symbols)
        self.calls.append(("unsubscribe", symbols))
        self.symbols -= set(symbols)

    def health(self) -> ConnectionHealth:
        return ConnectionHealth(self.connected, self.last_message_ns, self.messages, 0, 0)

    async def stop(self) -> None:
        return None

    async def tick(self, price: float) -> None:
        if not self.connected:
            return
        for symbol in sorted(self.symbols):
            now = time.time_ns()
            self.last_message_ns = now
            self.messages += 1
            await self.sink.submit(
                ProviderTick(
                    self.provider,
                    symbol,
                    {
                        "kind": "TRADE",
                        "timestamp": now,
                        "provider_timestamp": now,
                        "price": price,
                        "volume": 1.0,
                        "bid": None,
                        "ask": None,
                        "sequence": None,
                        "conditions": None,
                    },
                )
            )


async def test_outage_failover_cache_and_gradual_recovery(services):
    prefix = f"t-{uuid.uuid4().hex}:"
    redis = Redis.from_url(services.redis_url)
    registry = CollectorRegistry()
    cache = LastPriceCache(redis, prefix=prefix)
    sink = Sink()
    caching = CachingSink(sink, cache)
    adapters = {p: FakeAdapter(p, caching) for p in ("alpaca", "polygon")}
    bconf = BreakerConfig(failure_threshold=2, cooldown_s=0.4)
    alerts: list[dict] = []

    async def publish(record: dict) -> None:
        alerts.append(record)

    breakers = {
        p: RedisBreaker(redis, p, bconf, publish_alert=publish, prefix=prefix, registry=registry)
        for p in adapters
    }
    config = FailoverConfig(
        orders={"AAPL": ("alpaca", "polygon"), "MSFT": ("alpaca", "polygon")},
        hold_s=0.6,
        stale_after_s=0.3,
    )
    manager = FailoverManager(adapters, breakers, config, cache, registry=registry)
    alpaca, polygon = adapters["alpaca"], adapters["polygon"]

    async def poll_with_data(price: float) -> None:
        for a in adapters.values():
            await a.tick(price)
        await cache.flush()
        await manager.poll()

    try:
        await manager.poll()
        assert alpaca.symbols == {"AAPL", "MSFT"} and polygon.symbols == set()
        await poll_with_data(100.0)

        # Primary outage: the secondary is subscribed at the next poll.
        alpaca.connected = False
        await poll_with_data(101.0)
        assert manager.active("AAPL") == "polygon" and polygon.symbols == {"AAPL", "MSFT"}
        assert ("unsubscribe", ("AAPL", "MSFT")) in alpaca.calls
        await poll_with_data(102.0)  # the 2nd consecutive failure opens alpaca's breaker
        assert await breakers["alpaca"].state() == BreakerState.OPEN
        assert [(a["source"], a["status"]) for a in alerts] == [("alpaca", "RAISED")]
        assert sink.ticks[-1].provider == "polygon"

        # Everyone down: the last cached price, flagged stale.
        polygon.connected = False
        await poll_with_data(103.0)
        assert manager.active("AAPL") is None
        cached = await manager.last_price("AAPL")
        assert cached is not None and cached.stale
        assert (cached.price, cached.provider) == (102.0, "polygon")
        assert registry.get_sample_value("mdstream_failover_on_cache", {"symbol": "AAPL"}) == 1

        # The secondary comes back first: it takes over at once.
        polygon.connected = True
        await poll_with_data(104.0)
        assert manager.active("AAPL") == "polygon"
        assert registry.get_sample_value("mdstream_failover_on_cache", {"symbol": "AAPL"}) == 0

        # The primary reconnects; its breaker is still open: nothing changes until the cool-down.
        alpaca.connected = True
        await poll_with_data(105.0)
        assert alpaca.symbols == set()
        await asyncio.sleep(bconf.cooldown_s + 0.05)
        # Half-open: a trial subscription next to the secondary, which keeps serving.
        await poll_with_data(106.0)
        assert alpaca.symbols == {"AAPL", "MSFT"} and manager.active("AAPL") == "polygon"
        # Data on the trial: the breaker closes (CLEARED); the switch waits for the hold.
        await poll_with_data(107.0)
        assert await breakers["alpaca"].state() == BreakerState.CLOSED
        assert [a["status"] for a in alerts if a["source"] == "alpaca"] == ["RAISED", "CLEARED"]
        assert manager.active("AAPL") == "polygon"
        deadline = time.monotonic() + 5
        while manager.active("AAPL") != "alpaca" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await poll_with_data(108.0)
        assert manager.active("AAPL") == "alpaca" and manager.active("MSFT") == "alpaca"
        assert polygon.symbols == set()
        await poll_with_data(109.0)
        fresh = await manager.last_price("AAPL")
        assert fresh is not None and not fresh.stale and fresh.provider == "alpaca"
    finally:
        await redis.aclose()


async def test_silent_connection_counts_as_failure(services):
    """Connected but no data after subscribing: unhealthy, secondary takes over, breaker opens."""
    prefix = f"t-{uuid.uuid4().hex}:"
    redis = Redis.from_url(services.redis_url)
    cache = LastPriceCache(redis, prefix=prefix)
    adapters = {p: FakeAdapter(p, CachingSink(Sink(), cache)) for p in ("alpaca", "polygon")}
    breakers = {
        p: RedisBreaker(
            redis,
            p,
            BreakerConfig(failure_threshold=2, cooldown_s=60),
            prefix=prefix,
            registry=CollectorRegistry(),
        )
        for p in adapters
    }
    config = FailoverConfig(orders={"AAPL": ("alpaca", "polygon")}, hold_s=60, stale_after_s=0.2)
    manager = FailoverManager(adapters, breakers, config, cache, registry=CollectorRegistry())
    try:
        await manager.poll()
        assert manager.active("AAPL") == "alpaca"
        for _ in range(6):
            await asyncio.sleep(0.25)
            await adapters["polygon"].tick(1.0)  # only the secondary delivers
            await manager.poll()
        assert manager.active("AAPL") == "polygon"
        assert await breakers["alpaca"].state() == BreakerState.OPEN
    finally:
        await redis.aclose()


async def test_last_price_newest_wins_across_writers(services):
    prefix = f"t-{uuid.uuid4().hex}:"
    redis = Redis.from_url(services.redis_url)
    try:
        a, b = LastPriceCache(redis, prefix=prefix), LastPriceCache(redis, prefix=prefix)

        def trade(provider: str, ts: int, price: float) -> ProviderTick:
            return ProviderTick(
                provider,
                "AAPL",
                {
                    "kind": "TRADE",
                    "timestamp": ts,
                    "provider_timestamp": ts,
                    "price": price,
                    "volume": 1.0,
                    "bid": None,
                    "ask": None,
                    "sequence": None,
                    "conditions": None,
                },
            )

        a.update(trade("alpaca", 2_000, 10.0))
        b.update(trade("polygon", 1_000, 9.0))  # older, flushed later: must not win
        assert await a.flush() == 1 and await b.flush() == 1
        got = await a.get("AAPL", stale_after_ns=10, now_ns=2_005)
        assert (got.price, got.provider, got.stale, got.age_ns) == (10.0, "alpaca", False, 5)
        assert (await a.get("AAPL", stale_after_ns=10, now_ns=2_011)).stale
        assert await a.get("MSFT", stale_after_ns=10) is None
    finally:
        await redis.aclose()
