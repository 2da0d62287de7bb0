"""Kafka at the edge (confluent-kafka): topic set-up, publishing feeds, reading what committed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from mdstream.core.contracts import ALERT, RAW_BATCH, ContractSet, DecodeError
from mdstream.core.quality.alerts import severity_topic
from mdstream.core.simulate import FeedMessage


def ensure_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int,
    config: dict[str, str] | None = None,
) -> None:
    """Create missing topics with `partitions` partitions; refuse existing ones that differ.

    Outputs are co-partitioned with the raw topic (same partition number as the input), so a
    mismatch in partition counts would break exactly-once: it is an error, not a warning.
    `config`: topic configs for the ones created (e.g. cleanup.policy=compact).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=30).topics
    missing = [n for n in names if n not in existing]
    wrong = {
        n: len(existing[n].partitions)
        for n in names
        if n in existing and len(existing[n].partitions) != partitions
    }
    if wrong:
        raise RuntimeError(f"topics with the wrong partition count (want {partitions}): {wrong}")
    if not missing:
        return
    futures = admin.create_topics(
        [
            NewTopic(n, num_partitions=partitions, replication_factor=1, config=config or {})
            for n in missing
        ]
    )
    for fut in futures.values():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def publish(
    bootstrap: str,
    topic: str,
    messages: Iterable[FeedMessage],
    contracts: ContractSet,
    *,
    pace: float | None = None,
    on_sent: Callable[[FeedMessage], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Publish feed messages, encoding batches.

    `pace` is feed seconds per wall-clock second (None: as fast as possible).

    Returns the number of messages sent (all delivered when it returns).
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 2,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    start_wall = time.monotonic()
    start_feed: int | None = None
    sent = 0
    for msg in messages:
        if should_stop():
            break
        if pace:
            start_feed = msg.publish_ns if start_feed is None else start_feed
            delay = (msg.publish_ns - start_feed) / 1e9 / pace - (time.monotonic() - start_wall)
            if delay > 0:
                producer.poll(0)
                time.sleep(delay)
        value = contracts.encode(RAW_BATCH, msg.value) if isinstance(msg.value, dict) else msg.value
        while True:
            try:
                producer.produce(topic, value=value, key=msg.key)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if on_sent is not None:
            on_sent(msg)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} messages not delivered to {topic}")
    return sent


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


def committed_consumer(bootstrap: str, group: str | None = None) -> Consumer:
    """A read_committed consumer: it sees only what exactly-once processing committed."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"mdstream-reader-{time.time_ns()}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def read_all(bootstrap: str, topics: Iterable[str], idle_s: float = 3.0) -> list[Record]:
    """Every committed record of `topics` from the start, until `idle_s` passes with nothing new."""
    consumer = committed_consumer(bootstrap)
    meta = consumer.list_topics(timeout=30).topics
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta[t].partitions])
    out: list[Record] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            last = time.monotonic()
            out.append(
                Record(
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    msg.key(),
                    msg.value(),
                    msg.timestamp()[1],
                )
            )
        return out
    finally:
        consumer.close()


def decode_records(
    records: Iterable[Record], contracts: ContractSet
) -> Iterator[tuple[Record, str, dict[str, Any]]]:
    for rec in records:
        try:
            name, value = contracts.decode(rec.value)
        except DecodeError:
            continue
        yield rec, name, value


class KafkaAlertPublisher:
    """Publishes alert records (DataQualityAlertEvent) to the alerts topic, keyed by source."""

    def __init__(self, bootstrap: str, topic: str, contracts: Any | None = None) -> None:
        self.topic = topic
        self.contracts = contracts or ContractSet.load()
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0}
        )
        self._bootstrap = bootstrap
        self._ensured: set[str] = set()

    async def __call__(self, record: dict[str, Any]) -> None:
        value = self.contracts.encode(ALERT, record)
        # Like the pipeline's alerts: the all-alerts topic and the alert's severity topic.
        by_severity = severity_topic(self.topic, record["severity"])
        if by_severity not in self._ensured:  # once per topic, not per alert
            meta = await asyncio.to_thread(self._producer.list_topics, self.topic, 10)
            partitions = len(meta.topics[self.topic].partitions)
            await asyncio.to_thread(ensure_topics, self._bootstrap, [by_severity], partitions)
            self._ensured.add(by_severity)
        for topic in (self.topic, by_severity):
            self._producer.produce(topic, value=value, key=record["source"].encode())
        remaining = await asyncio.to_thread(self._producer.flush, 10)
        if remaining:
            raise RuntimeError(f"alert not delivered to {self.topic}")
