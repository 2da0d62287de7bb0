"""The corporate-actions agent in a real `faust worker`: Kafka in and out, PostgreSQL in between.

Announcements (an applied dividend, its duplicate, a conflicting one, a split, a dividend with no
prior close, two malformed messages) go through a worker; then the audit trail, the factor table,
the applied events (read_committed) and the dead letters are checked. The group is then rewound
to the start, as after a crash that lost the Kafka transaction but not the database commit: the
replay writes nothing to PostgreSQL and re-emits byte-identical events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from mdstream.bus.kafka import ensure_topics, read_all
from mdstream.core.contracts import ANNOUNCEMENT, CORPORATE_ACTION, ContractSet
from mdstream.core.corporate_actions.announcements import applied_event_record
from mdstream.services import Endpoints
from mdstream.storage import bars as bar_store
from mdstream.storage.corporate_actions import outcome_from_row
from tests.pg import pg  # noqa: F401  (fixture)
from tests.workers import Deployment, Worker

pytestmark = pytest.mark.services

CONTRACTS = ContractSet.load()
D1, D2, D3 = date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)
PARTITIONS = 2


def _announcement(
    n: int, type: str, ex: date, source: str = "feed-a", instrument: str = "X", **terms: Any
) -> bytes:
    record = {
        "announcementId": f"{source}/{instrument}/{n}",
        "announced_at": None,
        "source": source,
        "instrument_id": instrument,
        "symbol": instrument,
        "isin": None,
        "type": type,
        "ratio": None,
        "amount": None,
        "currency": None,
        "ex_date": ex.isoformat(),
        "record_date": None,
        "new_symbol": None,
        **terms,
    }
    return CONTRACTS.encode(ANNOUNCEMENT, record)


MESSAGES = [
    _announcement(1, "CASH_DIVIDEND", D2, amount=1.0, currency="USD"),  # applied
    _announcement(2, "CASH_DIVIDEND", D2, "feed-b", amount=1.0, currency="USD"),  # duplicate
    _announcement(3, "CASH_DIVIDEND", D2, "feed-c", amount=1.5, currency="USD"),  # conflict
    _announcement(4, "STOCK_SPLIT", D3, ratio=2.0),  # applied, no bar on its ex-date
    b"\x00\x00not avro",  # dead letter: decode
    _announcement(5, "BONUS_ISSUE", D3, ratio=2.0),  # dead letter: unknown type
    _announcement(6, "CASH_DIVIDEND", D1, amount=0.5, currency="USD"),  # no prior close
]


def _lag(dep: Deployment, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": dep.bootstrap, "group.id": dep.app_id})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        lag = 0
        try:
            for tp in consumer.committed(tps, timeout=10):
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                lag += high - max(tp.offset, 0)
        except KafkaException:  # the group coordinator is still loading: ask again
            return -1
        return lag
    finally:
        consumer.close()


def _run_until_caught_up(dep: Deployment, worker: Worker, topic: str, timeout: float = 120) -> None:
    worker.start()
    deadline = time.monotonic() + timeout
    while _lag(dep, topic) != 0:
        assert worker.alive(), worker.log_text()[-3000:]
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        time.sleep(0.5)
    assert worker.stop() == 0, worker.log_text()[-3000:]


def _rewind(dep: Deployment, topic: str) -> None:
    consumer = Consumer({"bootstrap.servers": dep.bootstrap, "group.id": dep.app_id})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, 0) for p in range(PARTITIONS)], asynchronous=False
        )
    finally:
        consumer.close()


async def _counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM corporate_action_audit) AS audit,"
        " (SELECT count(*) FROM adjustment_factors) AS factors"
    )
    return row["audit"], row["factors"]


@pytest.fixture
def deployments() -> Iterator[list[Deployment]]:
    """Deployments whose workers are killed at the end, also when an assertion failed."""
    made: list[Deployment] = []
    yield made
    for dep in made:
        dep.kill_all()


async def test_agent_records_decides_and_emits_exactly_once(
    pg,  # noqa: F811
    services: Endpoints,
    tmp_path: Path,
    deployments: list[Deployment],
) -> None:
    pool, schema = pg
    start = datetime(2024, 1, 2, 5, tzinfo=UTC)  # D1 00:00 New York
    async with pool.acquire() as conn:
        await bar_store.write_bars(
            conn, "1d", [("X", start, start, 50.0, 50.0, 50.0, 50.0, 1e3, None, 0, 0, None, [])]
        )
    dep = Deployment(
        services.kafka_bootstrap,
        tmp_path,
        partitions=PARTITIONS,
        extra_env={
            "MDSTREAM_POSTGRES_DSN": services.postgres_dsn,
            "MDSTREAM_POSTGRES_SCHEMA": schema,
        },
    )
    deployments.append(dep)
    topics = dep.settings.topics
    names = (topics.raw, *topics.outputs(), *topics.corporate_action_topics())
    ensure_topics(dep.bootstrap, names, PARTITIONS)
    producer = Producer({"bootstrap.servers": dep.bootstrap})
    for value in MESSAGES:  # one key: one partition, in this order
        producer.produce(topics.announcements, value=value, key=b"X")
    assert producer.flush(30) == 0

    _run_until_caught_up(dep, dep.worker("w1"), topics.announcements)

    audit = await pool.fetch(
        "SELECT audit_key, outcome, source, price_factor FROM corporate_action_audit"
    )
    by_offset = {int(r["audit_key"].rsplit(":", 1)[1]): r for r in audit}
    assert {o: r["outcome"] for o, r in by_offset.items()} == {
        0: "applied",
        1: "duplicate",
        2: "conflict",
        3: "applied",
        6: "no_reference_close",
    }
    assert by_offset[0]["price_factor"] == pytest.approx(0.98)  # 1 - 1/50 (stored D1 close)
    factors = await pool.fetch("SELECT ex_date, kind, price_factor FROM adjustment_factors")
    assert sorted((r["ex_date"], r["kind"]) for r in factors) == [
        (D2, "cash_dividend"),
        (D3, "stock_split"),
    ]

    def committed(topic: str) -> list[tuple[str, dict[str, Any]]]:
        return [CONTRACTS.decode(r.value) for r in read_all(dep.bootstrap, [topic], idle_s=2)]

    applied = committed(topics.corporate_actions)
    assert [name for name, _ in applied] == [CORPORATE_ACTION] * 2
    dividend, split = (event for _, event in applied)
    assert (
        dividend["action"]["type"] == "CASH_DIVIDEND" and dividend["action"]["source"] == "feed-a"
    )
    assert dividend["adjustments"]["price_adjustment_factor"] == pytest.approx(0.98)
    assert dividend["adjustments"]["volume_adjustment_factor"] == 1.0
    assert dividend["adjustments"]["affected_date_range"] == {"start": None, "end": "2024-01-02"}
    assert split["action"]["type"] == "STOCK_SPLIT"
    assert split["adjustments"]["price_adjustment_factor"] == 0.5
    assert split["adjustments"]["volume_adjustment_factor"] == 2.0
    assert split["adjustments"]["affected_date_range"]["end"] == "2024-01-02"  # last bar before

    dead = [record for _, record in committed(topics.dead_letter)]
    assert [(d["stage"], d["source_offset"]) for d in dead] == [
        ("corporate_action", 4),
        ("corporate_action", 5),
    ]
    assert dead[0]["reason"].startswith("unknown schema id")  # 00 00 "not " read as a header
    assert "BONUS_ISSUE" in dead[1]["reason"] and dead[1]["payload"] == MESSAGES[5]

    # Replay from the start, as if the Kafka transaction had been lost after the database commit.
    counts = await _counts(pool)
    _rewind(dep, topics.announcements)
    _run_until_caught_up(dep, dep.worker("w2"), topics.announcements)
    assert await _counts(pool) == counts == (5, 2)
    again = committed(topics.corporate_actions)
    assert len(again) == 4 and again[2:] == applied  # the same two records, field for field


@pytest.mark.slow
async def test_agent_survives_sigkill_exactly_once(
    pg,  # noqa: F811
    services: Endpoints,
    tmp_path: Path,
    deployments: list[Deployment],
) -> None:
    """Workers SIGKILLed while announcements flow: the database is ahead of Kafka after each
    kill (its commits are per message, Kafka's every 0.2 s), yet every announcement has one
    audit row and every applied one exactly one committed event, equal to the stored outcome."""
    pool, schema = pg
    rng = random.Random(5)
    sessions = [date(2024, 1, 1) + timedelta(days=d) for d in range(400)]
    rows, messages = [], []
    for i in range(12):
        symbol = f"S{i}"
        for day in sessions:
            start = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)
            rows.append((symbol, start, start, 50.0, 50.0, 50.0, 50.0, 1e3, None, 0, 0, None, []))
        for n in range(30):
            ex = sessions[1 + n * 13]
            record = {"type": "CASH_DIVIDEND", "amount": 0.1 + n / 100, "currency": "USD"}
            messages.append((symbol, _announcement(n, **record, ex=ex, instrument=symbol)))
            if rng.random() < 0.2:  # a duplicate from another feed
                messages.append(
                    (symbol, _announcement(n, **record, ex=ex, instrument=symbol, source="feed-b"))
                )
    async with pool.acquire() as conn:
        await bar_store.write_bars(conn, "1d", rows)
    dep = Deployment(
        services.kafka_bootstrap,
        tmp_path,
        partitions=PARTITIONS,
        extra_env={
            "MDSTREAM_POSTGRES_DSN": services.postgres_dsn,
            "MDSTREAM_POSTGRES_SCHEMA": schema,
        },
    )
    deployments.append(dep)
    topics = dep.settings.topics
    ensure_topics(
        dep.bootstrap,
        (topics.raw, *topics.outputs(), *topics.corporate_action_topics()),
        PARTITIONS,
    )
    producer = Producer({"bootstrap.servers": dep.bootstrap})
    for symbol, value in messages:
        producer.produce(topics.announcements, value=value, key=symbol.encode())
    assert producer.flush(30) == 0

    async def audited() -> int:
        return await pool.fetchval("SELECT count(*) FROM corporate_action_audit")

    worker = dep.worker("w")
    for kill_at in (len(messages) // 4, len(messages) // 2):
        worker.start()
        deadline = time.monotonic() + 120
        while await audited() < kill_at:
            assert worker.alive() and time.monotonic() < deadline, worker.log_text()[-3000:]
            time.sleep(0.05)
        worker.kill()
    _run_until_caught_up(dep, worker, topics.announcements)

    audit = await pool.fetch(
        "SELECT * FROM corporate_action_audit WHERE outcome = 'applied' ORDER BY audit_key"
    )
    assert await audited() == len(messages)  # one row per offset (and the key is unique)
    outcomes = await pool.fetch("SELECT outcome, count(*) FROM corporate_action_audit GROUP BY 1")
    assert dict(outcomes) == {"applied": 12 * 30, "duplicate": len(messages) - 12 * 30}
    events = [
        CONTRACTS.decode(r.value)[1]
        for r in read_all(dep.bootstrap, [topics.corporate_actions], idle_s=2)
    ]
    ids = [e["eventId"] for e in events]
    assert len(ids) == len(set(ids)) == len(audit)  # each applied event exactly once
    expected = {}
    for row in audit:
        outcome = outcome_from_row(row, new=False)
        record = applied_event_record(
            outcome.audit_key,
            outcome.action,
            price_factor=outcome.price_factor,  # type: ignore[arg-type]
            volume_factor=outcome.volume_factor,  # type: ignore[arg-type]
            reference_date=outcome.reference_date,
            decided_at=outcome.recorded_at,
        )
        expected[record["eventId"]] = record
    assert {e["eventId"]: e for e in events} == expected
    replays = worker.log_text().count("was recorded before (a replay)")
    print(f"\n{len(messages)} announcements, 2 SIGKILLs, {replays} replayed from the database")
