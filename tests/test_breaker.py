"""Circuit breaker on the real Redis; its SOURCE_UNAVAILABLE alerts on the real Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from mdstream.bus.kafka import KafkaAlertPublisher, decode_records, ensure_topics, read_all
from mdstream.core.contracts import ALERT, ContractSet
from mdstream.ingest.breaker import (
    BreakerConfig,
    BreakerState,
    RedisBreaker,
)

pytestmark = pytest.mark.services

FAST = BreakerConfig(failure_threshold=3, cooldown_s=0.3, half_open_trials=2, close_after=1)


@pytest.fixture
async def redis(services):
    client = Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


class Recorder:
    def __init__(self) -> None:
        self.alerts: list[dict] = []

    async def __call__(self, record: dict) -> None:
        self.alerts.append(record)


def breaker(redis, prefix, registry, config=FAST, publish=None, provider="finnhub"):
    return RedisBreaker(
        redis, provider, config, publish_alert=publish, prefix=prefix, registry=registry
    )


def gauge(registry: CollectorRegistry, provider: str = "finnhub") -> float | None:
    return registry.get_sample_value("mdstream_breaker_state", {"provider": provider})


async def test_full_cycle_is_shared_between_instances(redis, services):
    prefix = f"t-{uuid.uuid4().hex}:"
    registry = CollectorRegistry()
    alerts = Recorder()
    a = breaker(redis, prefix, registry, publish=alerts)
    for _ in range(2):
        assert await a.allow()
        await a.record_failure("HTTP 503")
    assert await a.state() == BreakerState.CLOSED
    await a.record_success()  # failures must be consecutive: a success resets the count
    for _ in range(2):
        await a.record_failure("HTTP 503")
    assert await a.state() == BreakerState.CLOSED
    await a.record_failure("HTTP 503")
    assert await a.state() == BreakerState.OPEN
    assert gauge(registry) == 2
    assert not await a.allow()

    # A restarted process (a new object, a new connection) sees the same open breaker.
    b_client = Redis.from_url(services.redis_url)
    try:
        b = breaker(b_client, prefix, CollectorRegistry(), publish=alerts)
        assert await b.state() == BreakerState.OPEN
        assert not await b.allow()
        await asyncio.sleep(FAST.cooldown_s + 0.05)
        # Half-open: exactly `half_open_trials` calls get through, across both processes.
        granted = [await a.allow(), await b.allow(), await a.allow(), await b.allow()]
        assert granted.count(True) == 2
        assert await a.state() == BreakerState.HALF_OPEN
        assert gauge(registry) == 1
        await b.record_success()
        assert await a.state() == BreakerState.CLOSED
        assert gauge(registry) == 0
        assert await a.allow()
    finally:
        await b_client.aclose()

    assert [(x["alert_type"], x["status"], x["source"]) for x in alerts.alerts] == [
        ("SOURCE_UNAVAILABLE", "RAISED", "finnhub"),
        ("SOURCE_UNAVAILABLE", "CLEARED", "finnhub"),
    ]
    assert "HTTP 503" in alerts.alerts[0]["description"]


async def test_half_open_failure_reopens_without_a_second_alert(redis):
    prefix = f"t-{uuid.uuid4().hex}:"
    alerts = Recorder()
    a = breaker(redis, prefix, CollectorRegistry(), publish=alerts)
    for _ in range(3):
        await a.record_failure("timeout")
    await asyncio.sleep(FAST.cooldown_s + 0.05)
    assert await a.allow()
    await a.record_failure("timeout again")
    assert await a.state() == BreakerState.OPEN
    assert not await a.allow()
    assert [x["status"] for x in alerts.alerts] == ["RAISED"]
    # The next outage (after recovery) is a new alert with a new id.
    await asyncio.sleep(FAST.cooldown_s + 0.05)
    assert await a.allow()
    await a.record_success()
    for _ in range(3):
        await a.record_failure("down")
    statuses = [x["status"] for x in alerts.alerts]
    assert statuses == ["RAISED", "CLEARED", "RAISED"]
    assert alerts.alerts[0]["eventId"] != alerts.alerts[2]["eventId"]


async def test_trials_of_dead_callers_are_handed_out_again(redis):
    prefix = f"t-{uuid.uuid4().hex}:"
    a = breaker(redis, prefix, CollectorRegistry())
    for _ in range(3):
        await a.record_failure("x")
    await asyncio.sleep(FAST.cooldown_s + 0.05)
    assert await a.allow() and await a.allow()
    assert not await a.allow()  # both trials taken; their callers "die" without reporting
    await asyncio.sleep(FAST.cooldown_s + 0.05)
    assert await a.allow()


async def test_concurrent_failures_open_once(redis):
    """Many processes failing at once: one opening, one RAISED alert."""
    prefix = f"t-{uuid.uuid4().hex}:"
    alerts = Recorder()
    config = BreakerConfig(failure_threshold=5, cooldown_s=60)
    breakers = [breaker(redis, prefix, CollectorRegistry(), config, alerts) for _ in range(8)]
    await asyncio.gather(*(b.record_failure("boom") for b in breakers for _ in range(4)))
    assert await breakers[0].state() == BreakerState.OPEN
    assert [x["status"] for x in alerts.alerts] == ["RAISED"]


async def test_alert_reaches_the_alerts_topic(redis, services):
    prefix = f"t-{uuid.uuid4().hex}:"
    topic = f"breaker-test-{uuid.uuid4().hex[:8]}.md.quality.alerts"
    ensure_topics(services.kafka_bootstrap, [topic], 1)
    contracts = ContractSet.load()
    publisher = KafkaAlertPublisher(services.kafka_bootstrap, topic, contracts)
    a = breaker(redis, prefix, CollectorRegistry(), publish=publisher, provider="polygon")
    t0 = time.time_ns()
    for _ in range(3):
        await a.record_failure("connection refused")
    await a.record_failure("connection refused")  # already open: nothing more is published
    await asyncio.sleep(FAST.cooldown_s + 0.05)
    assert await a.allow()
    await a.record_success()

    records = list(decode_records(read_all(services.kafka_bootstrap, [topic], 1.5), contracts))
    assert [name for _, name, _ in records] == [ALERT, ALERT]
    raised, cleared = (value for _, _, value in records)
    assert raised["alert_type"] == "SOURCE_UNAVAILABLE" and raised["status"] == "RAISED"
    assert raised["source"] == "polygon" and raised["instrument"] == "*"
    assert raised["timestamp"] >= t0
    assert cleared["status"] == "CLEARED"
    assert records[0][0].key == b"polygon"


async def test_alert_that_failed_to_publish_is_retried(redis):
    prefix = f"t-{uuid.uuid4().hex}:"
    sent: list[dict] = []
    down = True

    async def flaky(record: dict) -> None:
        if down:
            raise ConnectionError("kafka down")
        sent.append(record)

    a = breaker(redis, prefix, CollectorRegistry(), publish=flaky)
    for _ in range(3):
        await a.record_failure("x")  # opens; the alert cannot be published yet
    assert await a.state() == BreakerState.OPEN and sent == []
    down = False
    await a.allow()  # any later call delivers it
    assert [x["status"] for x in sent] == ["RAISED"]
