"""The bar sink between the real Kafka (transactional input) and the real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from mdstream.bus.kafka import ensure_topics
from mdstream.core.contracts import NORMALIZED, ContractSet
from mdstream.services import Endpoints
from mdstream.storage.bar_sink import BarSink
from tests.pg import pg  # noqa: F401  (fixture)
from tests.test_history import _event

pytestmark = pytest.mark.services

CONTRACTS = ContractSet.load()
T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def _bar(symbol: str, minute: int, close: float, **extra: object) -> bytes:
    return CONTRACTS.encode(
        NORMALIZED, _event(symbol, T0 + timedelta(minutes=minute), close, **extra)
    )


def _publish_transaction(
    bootstrap: str, topic: str, messages: list[bytes], *, commit: bool
) -> None:
    """As the pipeline writes: in a Kafka transaction (so the topic has commit markers)."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    producer.begin_transaction()
    for value in messages:
        producer.produce(topic, value=value, key=b"X", partition=0)
    if commit:
        producer.commit_transaction(30)
    else:
        producer.flush(30)
        producer.abort_transaction(30)


async def _sink_run(services: Endpoints, topic: str, pool: asyncpg.Pool, group: str) -> BarSink:
    sink = BarSink(services.kafka_bootstrap, topic, pool, group=group)
    try:
        await sink.run(lambda: False, idle_exit_s=3.0)
    finally:
        sink.close()
    return sink


async def _bars(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT instrument, window_start, close, revision, written_at FROM bars_1m ORDER BY 1, 2"
    )
    return [tuple(r) for r in rows]


async def test_sink_writes_committed_bars_once_and_keeps_its_offsets_in_postgres(
    pg,  # noqa: F811
    services: Endpoints,
) -> None:
    pool, _ = pg
    topic, group = f"t{uuid.uuid4().hex[:10]}.md.normalized.bars", f"sink-{uuid.uuid4().hex[:8]}"
    ensure_topics(services.kafka_bootstrap, [topic], 2)
    bootstrap = services.kafka_bootstrap
    _publish_transaction(bootstrap, topic, [_bar("X", m, 100.0 + m) for m in range(5)], commit=True)
    _publish_transaction(bootstrap, topic, [_bar("X", 10, 999.0)], commit=False)  # aborted
    _publish_transaction(
        bootstrap,
        topic,
        [
            # NormalizedMarketDataEvent has no revision field yet: every bar is revision 0, so
            # another copy of a stored window changes nothing (corrections: test_history.py)
            _bar("X", 1, 111.0),
            b"\x00garbage",  # dead-lettered in the database, with the reason
            _bar("X", 3, 1.0, interval="5m"),  # an interval we do not store
        ],
        commit=True,
    )

    first = await _sink_run(services, topic, pool, group)
    stored = await _bars(pool)
    assert [(r[1] - T0, r[2], r[3]) for r in stored] == [
        (timedelta(minutes=0), 100.0, 0),
        (timedelta(minutes=1), 101.0, 0),
        (timedelta(minutes=2), 102.0, 0),
        (timedelta(minutes=3), 103.0, 0),
        (timedelta(minutes=4), 104.0, 0),
    ]  # nothing of the aborted transaction (minute 10)
    assert first.stats.polled == 8 and first.stats.rejected == 2 and first.stats.changed == 5
    dead = await pool.fetch('SELECT "offset", reason FROM sink_dead_letters ORDER BY 1')
    assert len(dead) == 2 and "unsupported bar frequency '5m'" in dead[1]["reason"]
    next_offset = await pool.fetchval(
        "SELECT next_offset FROM sink_offsets WHERE consumer = $1 AND partition = 0", group
    )
    assert next_offset == dead[1]["offset"] + 1

    # Kafka's committed offset rewound (as after a crash before Kafka's commit): everything is
    # read again and skipped by the offsets stored with the bars; no row is touched.
    rewind = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in (0, 1)], asynchronous=False)
    rewind.close()
    again = await _sink_run(services, topic, pool, group)
    assert again.stats.polled == 8 and again.stats.skipped == 8 and again.stats.changed == 0
    assert await _bars(pool) == stored  # same values, same written_at
    assert await pool.fetchval("SELECT count(*) FROM sink_dead_letters") == 2


async def test_one_poll_with_bars_of_several_frequencies_stores_each_in_its_table(
    pg,  # noqa: F811
    services: Endpoints,
) -> None:
    """As the pipeline emits them: 1 s and 1 min bars interleaved in one transaction, so one
    sink batch (one database transaction) writes two tables."""
    pool, _ = pg
    topic, group = f"t{uuid.uuid4().hex[:10]}.md.normalized.bars", f"sink-{uuid.uuid4().hex[:8]}"
    ensure_topics(services.kafka_bootstrap, [topic], 1)
    second = _event("X", T0, 100.0)
    second.update(interval="1s", window_end=second["window_start"] + 10**9)
    messages = [CONTRACTS.encode(NORMALIZED, second), _bar("X", 0, 100.5), _bar("X", 1, 101.0)]
    _publish_transaction(services.kafka_bootstrap, topic, messages, commit=True)
    sink = await _sink_run(services, topic, pool, group)
    assert sink.stats.changed == 3
    assert await pool.fetchval("SELECT count(*) FROM bars_1s") == 1
    assert await pool.fetchval("SELECT count(*) FROM bars_1m") == 2
