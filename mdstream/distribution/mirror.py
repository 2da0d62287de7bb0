"""The Pulsar mirror: committed Kafka outputs → Pulsar, exactly once.

Why a confluent-kafka loop and not a faust agent: exactly once here rests on three things faust's
consumer hides — reading `read_committed`, committing a Kafka offset only after Pulsar has
acknowledged everything before it, and resuming from that committed offset after a crash. The loop
is small and owns all three; the process kind is `mirror` in the Procfile (`mdstream mirror`).

How a record is published once:
- each Kafka partition has its own Pulsar producers, all named `producer_name(topic, partition)`
  (stable across restarts) and every message's `sequence_id` is its Kafka offset + 1 (the Python
  client takes a sequence id of 0 for "none" and numbers such a message itself: offset 0 of
  every partition would escape deduplication);
- the namespaces have broker-side deduplication on: the broker remembers, per producer name and
  topic, the highest sequence id it persisted and drops anything at or below it;
- the mirror commits Kafka offsets only after every send up to them was acknowledged. A mirror
  killed anywhere restarts from the committed offset; what it sends again was either never
  persisted (accepted now) or persisted (dropped by the broker).
- batching is off: with explicit sequence ids the broker judges a batch by its first id only
  (seen here on 4.2.4 with the C++ client), which would let a re-sent batch straddle the mark.

A Pulsar outage: sends stay pending, the mirror stops fetching and commits nothing; Kafka lag
grows; when Pulsar is back the client re-sends in order and the loop resumes. A send still not
acknowledged after `SEND_TIMEOUT_S` fails the run (the process exits non-zero and its supervisor
restarts it from the last commit): a mirror must never wait forever, nor report progress it lacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pulsar
from confluent_kafka import Consumer, KafkaException, TopicPartition

from mdstream.core.contracts import ContractSet, DecodeError
from mdstream.distribution.pulsar_admin import deduplication_status, ensure_layout
from mdstream.distribution.routes import producer_name, route

log = logging.getLogger(__name__)

#: How long Pulsar may leave a send unacknowledged before the run fails (see the module doc).
SEND_TIMEOUT_S = 60


@dataclass
class MirrorStats:
    mirrored: int = 0  # acknowledged as newly persisted
    deduplicated: int = 0  # acknowledged as a duplicate the broker dropped
    undecodable: int = 0  # sent to the dead-letter topic
    commits: int = 0
    last_commit_s: float = field(default_factory=time.monotonic)


class _Pending:
    """Sends in flight, counted down by the Pulsar client's callbacks (its own thread)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0
        self.error: str | None = None

    def add(self) -> None:
        with self._cond:
            self.count += 1

    def done(self, error: str | None) -> None:
        with self._cond:
            self.count -= 1
            if error and self.error is None:
                self.error = error
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count == 0 or self.error, timeout)


class PulsarMirror:
    def __init__(
        self,
        bootstrap: str,
        sources: Sequence[str],
        pulsar_url: str,
        admin_url: str,
        *,
        group: str = "mdstream-pulsar-mirror",
        contracts: ContractSet | None = None,
        exchange_of: Callable[[str, int], str | None] | None = None,
        max_batch: int = 2000,
        instance: str | None = None,
    ) -> None:
        self.bootstrap, self.sources = bootstrap, list(sources)
        self.pulsar_url, self.admin_url, self.group = pulsar_url, admin_url, group
        self.contracts = contracts or ContractSet.load()
        self.exchange_of = exchange_of or (lambda symbol, at_ns: None)
        self.max_batch = max_batch
        self.instance = instance
        self.stats = MirrorStats()
        self._pending = _Pending()
        self._producers: dict[tuple[str, int, str], pulsar.Producer] = {}
        self._client: pulsar.Client | None = None
        self._consumer: Consumer | None = None

    # -- Pulsar side -------------------------------------------------------------------------
    def _producer(self, kafka_topic: str, partition: int, topic: str) -> pulsar.Producer:
        key = (kafka_topic, partition, topic)
        producer = self._producers.get(key)
        if producer is None:
            producer = self._producers[key] = self._create_producer(kafka_topic, partition, topic)
        return producer

    def _create_producer(self, kafka_topic: str, partition: int, topic: str) -> pulsar.Producer:
        """A new topic's producer; while Pulsar cannot be reached, wait (an outage pauses us).
        Nothing is sent before the broker deduplicates the topic (see `deduplication_status`)."""
        assert self._client is not None
        delay, warned = 0.2, False
        while True:
            try:
                producer = self._client.create_producer(
                    topic,
                    producer_name=producer_name(kafka_topic, partition),
                    batching_enabled=False,
                    send_timeout_millis=SEND_TIMEOUT_S * 1000,
                    max_pending_messages=50_000,
                    block_if_queue_full=True,
                )
                break
            except (pulsar.ConnectError, pulsar.Timeout, pulsar.ServiceUnitNotReady) as exc:
                if not warned:
                    log.warning("mirror: cannot open a producer on %s (%s); paused", topic, exc)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while (status := deduplication_status(self.admin_url, topic)) != "Enabled":
            if time.monotonic() > deadline:
                producer.close()
                raise RuntimeError(f"Pulsar does not deduplicate {topic} (status {status})")
            time.sleep(0.05)
        return producer

    def _close_partition(self, kafka_topic: str, partition: int) -> None:
        for key in [k for k in self._producers if k[:2] == (kafka_topic, partition)]:
            self._producers.pop(key).close()  # never flush: it waits without a bound

    def _callback(self, result: pulsar.Result, message_id: pulsar.MessageId) -> None:
        if result != pulsar.Result.Ok:
            self._pending.done(f"Pulsar send failed: {result}")
            return
        # A duplicate the broker dropped is acknowledged with the id (-1, -1).
        if message_id.ledger_id() < 0 or message_id.entry_id() < 0:
            self.stats.deduplicated += 1
        else:
            self.stats.mirrored += 1
        self._pending.done(None)

    def _send(self, msg) -> None:  # msg: confluent_kafka.Message
        try:
            contract, record = self.contracts.decode(msg.value())
        except DecodeError as exc:
            contract, record = None, None
            self.stats.undecodable += 1
            reason = str(exc)
        else:
            reason = ""
        where = route(contract, record, self.exchange_of)
        properties = {
            **where.properties,
            "kafka_topic": msg.topic(),
            "kafka_partition": str(msg.partition()),
            "kafka_offset": str(msg.offset()),
        }
        if reason:
            properties["reason"] = reason
        producer = self._producer(msg.topic(), msg.partition(), where.topic)
        self._pending.add()
        kwargs = {"event_timestamp": where.event_time_ms} if where.event_time_ms > 0 else {}
        if where.key:
            kwargs["partition_key"] = where.key
        producer.send_async(
            msg.value(),
            self._callback,
            properties=properties,
            sequence_id=msg.offset() + 1,  # never 0: see the module doc
            **kwargs,
        )

    # -- Kafka side --------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("mirror: assigned %s", sorted((tp.topic, tp.partition) for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Another member may take these over: it must be able to open the same producer names.
        (Nothing is committed here: the new owner re-sends from the last commit, deduplicated.)"""
        self._pending.wait(30.0)
        for tp in partitions:
            self._close_partition(tp.topic, tp.partition)

    def _wait_acks(self, consumer: Consumer, should_stop: Callable[[], bool]) -> bool:
        """Until every send is acknowledged. While Pulsar is away, fetching is paused but the
        consumer keeps polling (its group membership stays alive)."""
        if self._pending.wait(5.0):
            return self._raise_if_failed()
        assignment = consumer.assignment()
        consumer.pause(assignment)
        log.warning("mirror: Pulsar has not acknowledged %d sends; paused", self._pending.count)
        try:
            while not self._pending.wait(0.5):
                if should_stop():
                    return False
                consumer.poll(0)  # paused: returns nothing, serves the group protocol
        finally:
            consumer.resume(assignment)
        log.warning("mirror: Pulsar acknowledged again; resuming")
        return self._raise_if_failed()

    def _raise_if_failed(self) -> bool:
        if self._pending.error:
            raise RuntimeError(self._pending.error)
        return True

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> MirrorStats:
        ensure_layout(self.admin_url)
        self._client = pulsar.Client(
            self.pulsar_url,
            operation_timeout_seconds=30,
            logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
        )
        consumer = self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5,
                # A SIGKILLed mirror holds its partitions until its session expires: keep it short.
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                # Static membership: a restarted mirror takes its partitions back at once.
                **({"group.instance.id": f"{self.group}-{self.instance}"} if self.instance else {}),
            }
        )
        reported = 0
        consumer.subscribe(self.sources, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not should_stop():
                batch = consumer.consume(self.max_batch, 0.05)
                if not batch:
                    continue
                ends: dict[tuple[str, int], int] = {}
                for msg in batch:
                    if msg.error():
                        raise KafkaException(msg.error())
                    self._send(msg)
                    ends[(msg.topic(), msg.partition())] = msg.offset() + 1
                if not self._wait_acks(consumer, should_stop):
                    break  # stopping during an outage: nothing committed, nothing lost
                consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()],
                    asynchronous=False,
                )
                self.stats.commits += 1
                if self.stats.deduplicated != reported:
                    reported = self.stats.deduplicated
                    log.info("mirror: Pulsar dropped %d re-sent duplicates so far", reported)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        for producer in self._producers.values():
            producer.close()
        self._producers.clear()
        if self._client is not None:
            self._client.close()
            self._client = None
