"""Streaming adapters against their emulators, through the raw batcher to the real Kafka.

Every test compares what reached Kafka (read back read_committed, decoded with the contracts)
with what the emulator put on the wire, under the failures the issue names: garbage frames,
disconnects, heartbeat stalls, rejected keys, a second Alpaca connection, 429 storms.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from emulators.alpaca import AlpacaEmulator
from emulators.core import Emulator, Faults, SentTick
from emulators.finnhub import FinnhubEmulator
from emulators.polygon import PolygonEmulator
from mdstream.bus.kafka import ensure_topics, read_all
from mdstream.core.contracts import DEAD_LETTER, RAW_BATCH, ContractSet
from mdstream.ingest.alpaca import AlpacaBars, AlpacaFeed
from mdstream.ingest.batcher import BatchPolicy, RawBatcher
from mdstream.ingest.connection import Backoff, FatalFeedError, FeedProtocol, WebSocketFeed
from mdstream.ingest.finnhub import FinnhubFeed, FinnhubRest
from mdstream.ingest.http import RestAuthError
from mdstream.ingest.polygon import PolygonFeed
from mdstream.ingest.protocols import Breaker
from mdstream.providers.base import ProviderBar, ProviderTick
from mdstream.services import Endpoints
from mdstream.settings import Topics

pytestmark = pytest.mark.timeout(120)
CONTRACTS = ContractSet.load()
SYMBOLS = ["AAPL", "MSFT", "NVDA"]
KEY = "sk-test-0123456789abcdef"  # the emulators' key in these tests; must never leak
FAST = Backoff(base_s=0.05, cap_s=0.2)

EMULATORS: dict[str, Callable[..., Emulator]] = {
    "finnhub": FinnhubEmulator,
    "alpaca": AlpacaEmulator,
    "polygon": PolygonEmulator,
}


def protocol_for(emu: Emulator, key: str = KEY, heartbeat_timeout_s: float = 5.0) -> FeedProtocol:
    if isinstance(emu, FinnhubEmulator):
        return FinnhubFeed(key, emu.ws_url, heartbeat_timeout_s=heartbeat_timeout_s)
    if isinstance(emu, AlpacaEmulator):
        return AlpacaFeed(key, "test-secret", emu.ws_url, heartbeat_timeout_s=heartbeat_timeout_s)
    assert isinstance(emu, PolygonEmulator)
    return PolygonFeed(key, emu.ws_url, heartbeat_timeout_s=heartbeat_timeout_s)


@dataclass
class Published:
    ticks: list[SentTick]
    batches: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]


def as_sent(provider_symbol: str, tick: dict[str, Any]) -> SentTick:
    return SentTick(
        provider_symbol,
        tick["kind"],
        tick["timestamp"],
        price=tick["price"],
        size=tick["volume"],
        bid=tick["bid"],
        ask=tick["ask"],
    )


def read_back(bootstrap: str, topics: Topics) -> Published:
    out = Published([], [], [])
    for rec in read_all(bootstrap, [topics.raw, topics.dead_letter], idle_s=1.0):
        name, value = CONTRACTS.decode(rec.value)
        if name == RAW_BATCH:
            assert rec.key == value["instrument"]["symbol"].encode()
            out.batches.append(value)
            out.ticks += [as_sent(value["instrument"]["symbol"], t) for t in value["ticks"]]
        else:
            assert name == DEAD_LETTER
            out.dead_letters.append(value)
    return out


@pytest.fixture
def topics(services: Endpoints) -> Topics:
    t = Topics.with_prefix(f"test-ingest-{uuid.uuid4().hex[:8]}.")
    ensure_topics(services.kafka_bootstrap, [t.raw, t.dead_letter], partitions=2)
    return t


async def stream(
    emu: Emulator,
    bootstrap: str,
    topics: Topics,
    *,
    protocol: FeedProtocol | None = None,
    done: Callable[[WebSocketFeed], bool] | None = None,
    policy: BatchPolicy | None = None,
    breaker: Breaker | None = None,
) -> WebSocketFeed:
    """Run a feed until the emulator has sent its budget and the feed has seen it all."""
    batcher = RawBatcher(bootstrap, topics.raw, topics.dead_letter, CONTRACTS, policy)
    feed = WebSocketFeed(
        protocol or protocol_for(emu), batcher, backoff=FAST, seed=3, breaker=breaker
    )
    await feed.subscribe(SYMBOLS)
    task = asyncio.create_task(feed.run())
    seen = -1
    try:
        for _ in range(600):
            await asyncio.sleep(0.05)
            if task.done():
                break
            messages = feed.health().messages
            if emu.script.exhausted() and (done is None or done(feed)) and messages == seen:
                break
            seen = messages
    finally:
        await feed.stop()
        await task
        await batcher.close()
    return feed


def dead_letter_units(provider: str, frame: str) -> int:
    """How many dead letters one garbage frame makes: arrays are judged element by element."""
    try:
        value = json.loads(frame)
    except ValueError:
        return 1
    return len(value) if isinstance(value, list) and value and provider != "finnhub" else 1


# --- happy path with garbage: everything sent arrives, bad frames are dead letters ----------


@pytest.mark.services
@pytest.mark.parametrize("provider", sorted(EMULATORS))
async def test_feed_to_kafka_matches_the_wire_and_garbage_is_dead_lettered(
    services: Endpoints, topics: Topics, provider: str
) -> None:
    faults = Faults(garbage_every=7, sentinel_every=11)
    async with EMULATORS[provider](api_key=KEY, budget=300, faults=faults) as emu:
        feed = await stream(emu, services.kafka_bootstrap, topics)
    got = read_back(services.kafka_bootstrap, topics)

    assert len(emu.sent) == 300 and emu.garbage_sent and emu.sentinels_sent
    assert Counter(got.ticks) == Counter(emu.sent)
    # Batching: one provider and one instrument per message, fewer messages than ticks.
    assert {b["source"] for b in got.batches} == {provider}
    assert len(got.batches) < len(got.ticks)
    # Garbage never took the connection down, and every bad frame/element is kept.
    assert emu.connections == 1 and feed.health().reconnects == 0
    expected = sum(dead_letter_units(provider, g) for g in emu.garbage_sent) + emu.sentinels_sent
    assert len(got.dead_letters) == expected == feed.health().errors
    assert {(d["stage"], d["source"]) for d in got.dead_letters} == {("ingest", provider)}
    sentinels = [d for d in got.dead_letters if "sentinel" in d["reason"]]
    assert len(sentinels) == emu.sentinels_sent
    garbage_payloads = {d["payload"] for d in got.dead_letters}
    assert b"{not json" in garbage_payloads


# --- disconnects and stalls ------------------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("provider", sorted(EMULATORS))
async def test_disconnect_mid_stream_reconnects_resubscribes_and_loses_nothing(
    services: Endpoints, topics: Topics, provider: str
) -> None:
    faults = Faults(disconnect_after_frames=15)
    async with EMULATORS[provider](api_key=KEY, budget=200, faults=faults) as emu:
        feed = await stream(emu, services.kafka_bootstrap, topics)
    got = read_back(services.kafka_bootstrap, topics)

    assert emu.connections == 2 and feed.health().reconnects == 1
    assert len(emu.subscribe_requests) == (2 * len(SYMBOLS) if provider == "finnhub" else 2)
    assert len(emu.sent) == 200
    assert Counter(got.ticks) == Counter(emu.sent)
    assert not got.dead_letters


@pytest.mark.services
async def test_heartbeat_stall_triggers_a_reconnect(services: Endpoints, topics: Topics) -> None:
    faults = Faults(stall_after_frames=10)
    async with PolygonEmulator(api_key=KEY, budget=150, heartbeat_s=0.1, faults=faults) as emu:
        protocol = protocol_for(emu, heartbeat_timeout_s=0.6)
        feed = await stream(
            emu,
            services.kafka_bootstrap,
            topics,
            protocol=protocol,
            done=lambda f: f.health().reconnects >= 1,
        )
    got = read_back(services.kafka_bootstrap, topics)

    assert emu.connections == 2 and feed.health().reconnects == 1
    assert Counter(got.ticks) == Counter(emu.sent) and len(emu.sent) == 150


class RecordingBreaker:
    """A Breaker that refuses the first `deny` calls and records what it is told."""

    def __init__(self, deny: int) -> None:
        self.deny = deny
        self.calls: list[str] = []

    async def allow(self) -> bool:
        self.calls.append("allow")
        if self.deny:
            self.deny -= 1
            return False
        return True

    async def record_success(self) -> None:
        self.calls.append("success")

    async def record_failure(self, reason: str) -> None:
        self.calls.append(f"failure: {reason}")


@pytest.mark.services
async def test_breaker_is_asked_before_every_connection_and_told_the_outcome(
    services: Endpoints, topics: Topics
) -> None:
    breaker = RecordingBreaker(deny=2)
    faults = Faults(disconnect_after_frames=5)
    async with AlpacaEmulator(api_key=KEY, budget=60, faults=faults) as emu:
        feed = await stream(emu, services.kafka_bootstrap, topics, breaker=breaker)
    got = read_back(services.kafka_bootstrap, topics)
    assert breaker.calls[:5] == ["allow", "allow", "allow", "success", breaker.calls[4]]
    assert breaker.calls[4].startswith("failure: FeedError: server closed the connection")
    assert breaker.calls[5:] == ["allow", "success"]
    assert emu.connections == 2 and feed.health().reconnects == 3  # 2 refusals + 1 drop
    assert Counter(got.ticks) == Counter(emu.sent)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    rng = random.Random(5)
    for attempt in range(12):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        bound = min(2.0, 0.1 * 2**attempt)
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound  # spread, not lockstep


@pytest.mark.services
async def test_live_unsubscribe_rate_and_error_frames_keep_the_connection(
    services: Endpoints, topics: Topics
) -> None:
    async with AlpacaEmulator(api_key=KEY, frame_interval_s=0.01) as emu:
        batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
        feed = WebSocketFeed(protocol_for(emu), batcher, backoff=FAST)
        await feed.subscribe(SYMBOLS)
        task = asyncio.create_task(feed.run())
        await feed.wait_connected(5)
        await feed.unsubscribe(["MSFT"])
        await feed.subscribe(["TSLA"])
        while [sorted(c.symbols) for c in emu.active] != [["AAPL", "NVDA", "TSLA"]]:
            await asyncio.sleep(0.05)
        correction = {
            "T": "c",
            "S": "AAPL",
            "x": "V",
            "oi": 7,
            "op": 100.0,
            "os": 10,
            "oc": ["@"],
            "ci": 8,
            "cp": 100.5,
            "cs": 10,
            "cc": ["@"],
            "z": "C",
            "t": "2025-11-24T16:00:00.123456789Z",
        }
        await emu.inject(json.dumps([correction]))
        await emu.inject(json.dumps([{"T": "error", "code": 400, "msg": "invalid syntax"}]))
        await emu.inject('{"type":"error","msg":"not alpaca at all"}')
        await asyncio.sleep(2.2)
        rate = feed.message_rate()
        health = feed.health()
        await feed.stop()
        await task
        await batcher.close()
    assert rate > 10  # ~100 frames/s are sent
    got = read_back(services.kafka_bootstrap, topics)
    correction_letter, garbage_letter = got.dead_letters
    assert "trade correction" in correction_letter["reason"]
    assert json.loads(correction_letter["payload"])["ci"] == 8
    assert "not a JSON array" in garbage_letter["reason"]
    assert "TSLA" in {t.symbol for t in got.ticks}
    assert Counter(got.ticks) == Counter(emu.sent)
    assert health.connected and health.reconnects == 0  # a rejected request is not a failure


@pytest.mark.services
async def test_a_quiet_but_live_feed_is_kept(services: Endpoints, topics: Topics) -> None:
    """No data and no server heartbeats: our pings are answered, so the connection stays."""
    async with PolygonEmulator(api_key=KEY, budget=20, heartbeat_s=60) as emu:
        batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
        feed = WebSocketFeed(protocol_for(emu, heartbeat_timeout_s=0.4), batcher, backoff=FAST)
        await feed.subscribe(SYMBOLS)
        task = asyncio.create_task(feed.run())
        await feed.wait_connected(5)
        await asyncio.sleep(2.0)  # five heartbeat timeouts of silence after the 20 ticks
        health = feed.health()
        await feed.stop()
        await task
        await batcher.close()
    assert emu.script.exhausted()
    assert health.connected and health.reconnects == 0 and emu.connections == 1


@pytest.mark.services
async def test_polygon_minute_aggregates_reach_the_bar_callback(
    services: Endpoints, topics: Topics
) -> None:
    bars: list[ProviderBar] = []
    async with PolygonEmulator(api_key=KEY, budget=0) as emu:
        batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
        feed = WebSocketFeed(protocol_for(emu), batcher, backoff=FAST, on_bar=bars.append)
        await feed.subscribe(["MSFT"])
        task = asyncio.create_task(feed.run())
        await feed.wait_connected(5)
        aggregate = {
            "ev": "AM",
            "sym": "MSFT",
            "v": 4110,
            "av": 9470157,
            "op": 410.0,
            "vw": 411.2,
            "o": 411.0,
            "c": 411.5,
            "h": 411.9,
            "l": 410.8,
            "a": 410.5,
            "z": 68,
            "s": 1764000000000,
            "e": 1764000060000,
        }
        await emu.inject(json.dumps([aggregate]))
        while not bars:
            await asyncio.sleep(0.02)
        await feed.stop()
        await task
        await batcher.close()
    (bar,) = bars
    assert (bar.symbol, bar.interval, bar.start_ns, bar.close, bar.vwap) == (
        "MSFT",
        "1m",
        1764000000000 * 10**6,
        411.5,
        411.2,
    )
    assert emu.subscribe_requests == [["MSFT"]]


# --- refusals: clear error, no retry storm ---------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("provider", sorted(EMULATORS))
async def test_bad_api_key_is_a_clear_error_without_retries(
    services: Endpoints, topics: Topics, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with EMULATORS[provider](api_key=KEY, budget=10) as emu:
        batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
        wrong = "sk-wrong-key-42"
        feed = WebSocketFeed(protocol_for(emu, key=wrong), batcher, backoff=FAST)
        await feed.subscribe(SYMBOLS)
        with caplog.at_level(logging.DEBUG), pytest.raises(FatalFeedError) as info:
            await asyncio.wait_for(feed.run(), 10)
        await batcher.close()
    message = str(info.value)
    assert any(word in message for word in ("credentials", "auth failed", "auth_failed"))
    assert emu.connections <= 1 and feed.health().reconnects == 0
    assert wrong not in caplog.text


@pytest.mark.services
async def test_alpaca_second_connection_gets_406_and_stops(
    services: Endpoints, topics: Topics
) -> None:
    async with AlpacaEmulator(api_key=KEY) as emu:
        batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
        first = WebSocketFeed(protocol_for(emu), batcher, backoff=FAST)
        await first.subscribe(["AAPL"])
        first_task = asyncio.create_task(first.run())
        await first.wait_connected(5)
        second = WebSocketFeed(protocol_for(emu), batcher, backoff=FAST)
        with pytest.raises(FatalFeedError, match="406: connection limit exceeded"):
            await asyncio.wait_for(second.run(), 10)
        assert first.health().connected and emu.connections == 2
        await first.stop()
        await first_task
        await batcher.close()
    assert emu.errors_sent == [406]


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.services
async def test_api_key_never_reaches_logs_or_dead_letters(
    services: Endpoints, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    """Finnhub carries the key in the URL; a frame that echoes it must be redacted too."""
    faults = Faults(disconnect_after_frames=3)
    async with FinnhubEmulator(api_key=KEY, budget=40, faults=faults) as emu:
        batcher = RawBatcher(services.kafka_bootstrap, topics.raw, topics.dead_letter, CONTRACTS)
        feed = WebSocketFeed(protocol_for(emu), batcher, backoff=FAST)
        await feed.subscribe(["AAPL"])
        with caplog.at_level(logging.DEBUG):
            task = asyncio.create_task(feed.run())
            await feed.wait_connected(5)
            echo = {"type": "trade", "data": [{"s": "AAPL", "p": -1, "t": 1, "v": 1, "k": KEY}]}
            for conn in emu.active:
                await conn.send(json.dumps(echo))
            await feed.wait_connected(5)
            while not emu.script.exhausted() or feed.health().reconnects < 1:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            await feed.stop()
            await task
            await batcher.close()
    got = read_back(services.kafka_bootstrap, topics)
    assert feed.health().reconnects >= 1  # a reconnect was logged
    assert len(got.dead_letters) == 1
    (letter,) = got.dead_letters
    assert b"<redacted>" in letter["payload"]
    assert KEY.encode() not in letter["payload"] and KEY not in letter["reason"]
    assert "reconnecting" in caplog.text and KEY not in caplog.text


# --- batcher bounds ----------------------------------------------------------------------------


@pytest.mark.services
async def test_batches_are_bounded_by_size_and_grouped_by_instrument(
    services: Endpoints, topics: Topics
) -> None:
    batcher = RawBatcher(
        services.kafka_bootstrap,
        topics.raw,
        topics.dead_letter,
        CONTRACTS,
        BatchPolicy(max_ticks=100, max_delay_s=0.05),
    )
    base = 1_764_000_000_000_000_000
    for i in range(250):
        for provider, symbol in (("alpaca", "AAPL"), ("polygon", "AAPL"), ("alpaca", "MSFT")):
            tick = {
                "kind": "TRADE",
                "timestamp": base + i,
                "provider_timestamp": base + i,
                "price": 100.0 + i / 100,
                "volume": 1.0,
                "bid": None,
                "ask": None,
                "sequence": i,
                "conditions": None,
            }
            await batcher.submit(ProviderTick(provider, symbol, tick))
    await batcher.close()
    got = read_back(services.kafka_bootstrap, topics)
    sizes = Counter((b["source"], b["instrument"]["symbol"], len(b["ticks"])) for b in got.batches)
    for key in (("alpaca", "AAPL"), ("polygon", "AAPL"), ("alpaca", "MSFT")):
        assert sizes[(*key, 100)] == 2 and sizes[(*key, 50)] == 1
    assert sum(sizes.values()) == 9
    for b in got.batches:  # arrival order kept within a batch
        seqs = [t["sequence"] for t in b["ticks"]]
        assert seqs == sorted(seqs)


# --- REST: pagination and 429 storms ---------------------------------------------------------


class RecordingLimiter:
    """A Limiter that lets everything through and records the Retry-After it was told."""

    def __init__(self) -> None:
        self.acquired = 0
        self.retry_afters: list[tuple[str, float]] = []

    async def acquire(self, endpoint: str) -> None:
        self.acquired += 1

    def retry_after(self, endpoint: str, seconds: float) -> None:
        self.retry_afters.append((endpoint, seconds))


def gaps_after_429(requests: list[tuple[float, str, int]]) -> list[float]:
    return [b[0] - a[0] for a, b in itertools.pairwise(requests) if a[2] == 429]


async def test_finnhub_candles_survive_a_429_storm_honouring_retry_after() -> None:
    limiter = RecordingLimiter()
    async with (
        FinnhubEmulator(api_key=KEY, rest_429_first=4, retry_after_s=0.2) as emu,
        aiohttp.ClientSession() as session,
    ):
        rest = FinnhubRest(KEY, session, limiter, base_url=emu.rest_url)
        start = datetime(2025, 11, 24, 15, 0, tzinfo=UTC)
        result = await rest.fetch("AAPL", start, start + timedelta(hours=1), "1m")
    assert not result.errors and len(result.bars) == 60
    assert [b.start_ns for b in result.bars] == [
        int((start + timedelta(minutes=i)).timestamp()) * 10**9 for i in range(60)
    ]
    assert [s for _, _, s in emu.rest_requests] == [429, 429, 429, 429, 200]
    assert limiter.retry_afters == [("stock/candle", 0.2)] * 4
    assert min(gaps_after_429(emu.rest_requests)) >= 0.2


async def test_alpaca_bars_follow_pages_through_a_429_storm() -> None:
    limiter = RecordingLimiter()
    async with (
        AlpacaEmulator(api_key=KEY, rest_429_first=3, retry_after_s=0.1, page_size=50) as emu,
        aiohttp.ClientSession() as session,
    ):
        bars = AlpacaBars(KEY, "test-secret", session, limiter, base_url=emu.http_url)
        start = datetime(2025, 11, 24, 14, 30, tzinfo=UTC)
        result = await bars.fetch("MSFT", start, start + timedelta(hours=4), "1m")
    starts = [b.start_ns for b in result.bars]
    assert not result.errors and starts == sorted(set(starts))
    assert 200 < len(starts) < 240  # the emulator leaves ~10 % of minutes without trades
    assert bars.pages == -(-len(starts) // 50)
    assert [s for _, _, s in emu.rest_requests].count(429) == 3
    assert len(limiter.retry_afters) == 3
    assert min(gaps_after_429(emu.rest_requests)) >= 0.1


async def test_rest_bad_key_is_refused_once() -> None:
    async with FinnhubEmulator(api_key=KEY) as emu, aiohttp.ClientSession() as session:
        rest = FinnhubRest("sk-wrong", session, base_url=emu.rest_url)
        with pytest.raises(RestAuthError, match="HTTP 401"):
            await rest.quote("AAPL")
        ok = await FinnhubRest(KEY, session, base_url=emu.rest_url).quote("AAPL")
    assert len(emu.rest_requests) == 2
    assert ok.control[0]["type"] == "snapshot" and ok.control[0]["last"] > 0
