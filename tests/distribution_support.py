"""Helpers for the distribution tests and benchmark: sample records, a transactional Kafka feed
(as an exactly-once job writes its outputs), the mirror as a real process, Pulsar readers."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from mdstream.bus.kafka import committed_consumer
from mdstream.core.contracts import ALERT, CONSENSUS, NORMALIZED, ContractSet
from mdstream.services import Endpoints
from tests.test_contracts import RECORDS

MDSTREAM = str(Path(sys.executable).parent / "mdstream")
T0 = 1_764_000_000_000_000_000


def bar(
    symbol: str, window_start: int, close: float, interval: str = "1s", revision: int = 0
) -> dict[str, Any]:
    record = copy.deepcopy(RECORDS[NORMALIZED])
    record["eventId"] = f"{symbol}-{interval}-{window_start}-{revision}"
    record["instrument"]["symbol"] = symbol
    record["interval"] = interval
    record["window_start"] = record["timestamp_utc"] = window_start
    record["window_end"] = window_start + 1_000_000_000
    record["revision"] = revision
    o = record["ohlcv"]
    o["open"], o["high"], o["low"], o["close"], o["vwap"] = close, close, close, close, close
    return record


def alert(symbol: str, severity: str, ts: int) -> dict[str, Any]:
    record = copy.deepcopy(RECORDS[ALERT])
    record.update(
        eventId=f"alert-{symbol}-{ts}", instrument=symbol, severity=severity, timestamp=ts
    )
    return record


def consensus(symbol: str, price: float, as_of: int) -> dict[str, Any]:
    record = copy.deepcopy(RECORDS[CONSENSUS])
    record.update(eventId=f"cons-{symbol}-{as_of}", instrument=symbol, price=price, as_of=as_of)
    return record


@dataclass
class Item:
    topic: str
    key: str
    value: bytes


class TransactionalFeed(threading.Thread):
    """Writes `items` in Kafka transactions of `size`, every `abort_every`-th aborted, at `rate`
    messages/s; remembers each committed transaction's messages and commit time."""

    def __init__(
        self,
        bootstrap: str,
        items: Sequence[Item],
        *,
        rate: float,
        size: int = 20,
        abort_every: int = 0,
        txn_id: str = "dist-feed",
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.items, self.rate = bootstrap, list(items), rate
        self.size, self.abort_every, self.txn_id = size, abort_every, txn_id
        self.committed: list[Item] = []
        self.commit_times: dict[bytes, float] = {}  # value → wall time its commit returned
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer(
                {"bootstrap.servers": self.bootstrap, "transactional.id": self.txn_id,
                 "linger.ms": 1}
            )  # fmt: skip
            producer.init_transactions(30)
            start = time.monotonic()
            for n, at in enumerate(range(0, len(self.items), self.size), start=1):
                chunk = self.items[at : at + self.size]
                delay = start + at / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producer.begin_transaction()
                for item in chunk:
                    producer.produce(item.topic, value=item.value, key=item.key.encode())
                if self.abort_every and n % self.abort_every == 0:
                    producer.flush(30)
                    producer.abort_transaction(30)
                    continue
                producer.commit_transaction(30)
                now = time.time()
                self.committed.extend(chunk)
                for item in chunk:
                    self.commit_times[item.value] = now
        except BaseException as exc:
            self.error = exc


def data_ends(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Per partition, the offset after its last committed record: a transactional topic ends
    with a commit marker, which no consumer ever commits past."""
    reader = committed_consumer(bootstrap)
    try:
        meta = reader.list_topics(timeout=10).topics
        ends = {}
        for topic in topics:
            for p in meta[topic].partitions:
                _, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                reader.assign([TopicPartition(topic, p, max(high - 500, 0))])
                last = -1
                while (msg := reader.poll(1.0)) is not None and not msg.error():
                    last = msg.offset()
                ends[(topic, p)] = last + 1
        return ends
    finally:
        reader.close()


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Committed records of `topics` (the feed has ended) that `group` has not committed past."""
    ends = data_ends(bootstrap, topics)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(t, p) for (t, p) in ends]
        committed = consumer.committed(tps, timeout=10)
        return sum(max(ends[(tp.topic, tp.partition)] - max(tp.offset, 0), 0) for tp in committed)
    finally:
        consumer.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


@dataclass
class Process:
    """An `mdstream <args>` process with its own log, SIGKILL-able."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts} =====\n".encode())
        self.proc = subprocess.Popen(
            [MDSTREAM, *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def stack_env(endpoints: Endpoints, app_id: str, **extra: str) -> dict[str, str]:
    """Environment for a distribution process of an isolated deployment (prefixed topics)."""
    env = dict(os.environ)
    env.update(
        MDSTREAM_APP_ID=app_id,
        MDSTREAM_TOPIC_PREFIX=f"{app_id}.",
        MDSTREAM_BROKER=f"kafka://{endpoints.kafka_bootstrap}",
        MDSTREAM_PULSAR_URL=endpoints.pulsar_url,
        MDSTREAM_PULSAR_ADMIN_URL=endpoints.pulsar_admin_url,
        MDSTREAM_REDIS_URL=endpoints.redis_url,
        **extra,
    )
    return env


@dataclass
class PulsarMessage:
    topic: str
    key: str
    value: bytes
    event_ms: int
    properties: dict[str, str]
    publish_ms: int
    received: float = field(default=0.0)


def read_pulsar(pulsar_url: str, topics: Sequence[str], idle_s: float = 3.0) -> list[PulsarMessage]:
    """Everything in `topics` from the earliest message (a reader per topic)."""
    import pulsar

    client = pulsar.Client(pulsar_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    out: list[PulsarMessage] = []
    try:
        for topic in topics:
            reader = client.create_reader(topic, pulsar.MessageId.earliest)
            while reader.has_message_available():
                m = reader.read_next(int(idle_s * 1000))
                out.append(
                    PulsarMessage(topic, m.partition_key(), m.data(), m.event_timestamp(),
                                  dict(m.properties()), m.publish_timestamp())
                )  # fmt: skip
            reader.close()
    finally:
        client.close()
    return out


def encode_all(contracts: ContractSet, pairs: Sequence[tuple[str, str, dict]]) -> list[Item]:
    """(topic, contract, record) → feed items keyed by instrument."""
    items = []
    for topic, name, record in pairs:
        key = record["instrument"]["symbol"] if name == NORMALIZED else record["instrument"]
        items.append(Item(topic, key, contracts.encode(name, record)))
    return items
