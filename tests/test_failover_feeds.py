"""Failover between two real streaming adapters and their emulators, on the real Redis and Kafka:
the primary's server goes away → the secondary is subscribed and its ticks reach the raw topic →
the primary's server comes back → after its breaker's trial and the hold time it serves again,
and the secondary is unsubscribed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from emulators.alpaca import AlpacaEmulator
from emulators.polygon import PolygonEmulator
from mdstream.bus.kafka import ensure_topics, read_all
from mdstream.core.contracts import RAW_BATCH, ContractSet
from mdstream.ingest.alpaca import AlpacaFeed
from mdstream.ingest.batcher import RawBatcher
from mdstream.ingest.breaker import BreakerConfig, RedisBreaker
from mdstream.ingest.connection import Backoff, WebSocketFeed
from mdstream.ingest.failover import FailoverConfig, FailoverManager
from mdstream.ingest.last_price import CachingSink, LastPriceCache
from mdstream.ingest.polygon import PolygonFeed
from mdstream.services import Endpoints
from mdstream.settings import Topics

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]
KEY = "failover-key-0123456789"
CONTRACTS = ContractSet.load()


async def _until(what: str, condition: Callable[[], bool], timeout_s: float = 20.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)
    return time.time_ns()


async def test_primary_outage_fails_over_to_the_secondary_and_back(services: Endpoints) -> None:
    prefix = f"t-{uuid.uuid4().hex[:10]}:"
    topics = Topics.with_prefix(f"test-failover-{uuid.uuid4().hex[:8]}.")
    ensure_topics(services.kafka_bootstrap, [topics.raw, topics.dead_letter], partitions=1)
    redis = Redis.from_url(services.redis_url)
    batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
    cache = LastPriceCache(redis, prefix=prefix)
    sink = CachingSink(batcher, cache)
    bconf = BreakerConfig(failure_threshold=2, cooldown_s=1.0)
    breakers = {
        p: RedisBreaker(redis, p, bconf, prefix=prefix, registry=CollectorRegistry())
        for p in ("alpaca", "polygon")
    }
    fast = Backoff(base_s=0.05, cap_s=0.3)
    emulator_args = {"api_key": KEY, "frame_interval_s": 0.02, "ticks_per_frame": 1}
    alpaca_emu = AlpacaEmulator(quote_share=0.0, secret="s", **emulator_args)
    polygon_emu = PolygonEmulator(quote_share=0.0, seed=2, **emulator_args)
    await alpaca_emu.start()
    await polygon_emu.start()
    port = alpaca_emu.port
    feeds = {
        "alpaca": WebSocketFeed(
            AlpacaFeed(KEY, "s", alpaca_emu.ws_url), sink, breaker=breakers["alpaca"], backoff=fast
        ),
        "polygon": WebSocketFeed(
            PolygonFeed(KEY, polygon_emu.ws_url), sink, breaker=breakers["polygon"], backoff=fast
        ),
    }
    config = FailoverConfig(
        orders={"AAPL": ("alpaca", "polygon")}, hold_s=1.0, stale_after_s=0.5, poll_s=0.1
    )
    manager = FailoverManager(feeds, breakers, config, cache, registry=CollectorRegistry())
    tasks = [asyncio.create_task(f.run()) for f in feeds.values()]
    # Supervision starts once the feeds are up: a feed still connecting counts as failing.
    await asyncio.gather(*(f.wait_connected(20) for f in feeds.values()))
    tasks.append(asyncio.create_task(manager.run()))
    alpaca_back = None
    try:
        await _until("alpaca serves AAPL", lambda: len(alpaca_emu.sent) > 20)
        assert manager.active("AAPL") == "alpaca" and not polygon_emu.sent

        await alpaca_emu.stop()  # the primary's server goes away
        t_down = time.time_ns()
        await _until("polygon takes over", lambda: len(polygon_emu.sent) > 20)
        assert manager.active("AAPL") == "polygon"

        alpaca_back = AlpacaEmulator(
            quote_share=0.0, secret="s", port=port, seed=3, **emulator_args
        )
        await alpaca_back.start()
        t_up = time.time_ns()
        await _until("alpaca serves again", lambda: manager.active("AAPL") == "alpaca")
        await _until("polygon is let go", lambda: not feeds["polygon"]._symbols)
        polygon_sent = len(polygon_emu.sent)
        await _until("alpaca streams", lambda: len(alpaca_back.sent) > 20)
        await asyncio.sleep(0.3)
        assert len(polygon_emu.sent) == polygon_sent, "the secondary still streams"
    finally:
        for f in feeds.values():
            await f.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        for emu in (polygon_emu, alpaca_back):
            if emu is not None:
                await emu.stop()
        await redis.aclose()

    got: dict[str, list[int]] = {"alpaca": [], "polygon": []}
    for rec in read_all(services.kafka_bootstrap, [topics.raw], idle_s=1.0):
        name, batch = CONTRACTS.decode(rec.value)
        assert name == RAW_BATCH and batch["instrument"]["symbol"] == "AAPL"
        got[batch["source"]] += [t["timestamp"] for t in batch["ticks"]]
    sent_alpaca = [t.ts_ns for t in alpaca_emu.sent + alpaca_back.sent]
    assert sorted(got["alpaca"]) == sorted(sent_alpaca)
    assert sorted(got["polygon"]) == sorted(t.ts_ns for t in polygon_emu.sent)
    # The secondary streamed only during the outage; the primary before and after it.
    assert t_down <= min(got["polygon"]) and max(got["polygon"]) > t_up
    assert max(t.ts_ns for t in alpaca_emu.sent) <= t_down < min(t.ts_ns for t in alpaca_back.sent)
