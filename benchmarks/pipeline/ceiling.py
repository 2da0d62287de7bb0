"""Phase 3, the ceilings the worker's throughput is read against.

Bare confluent-kafka consume → produce over the same raw messages (plain, then transactional as an
EOS task commits) bounds what Kafka allows; the processing step alone, in-process, bounds what the
code allows. benchmarks.compare reuses the passthrough as its L1 rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from benchmarks.pipeline.harness import CONTRACTS
from mdstream.bus.kafka import ensure_topics
from mdstream.core.processor import RawMessage, recompute
from mdstream.settings import Settings


@dataclass
class Passthrough:
    label: str
    messages: int
    wall_s: float
    join_s: float
    commits: int = 0
    cpu_s: float | None = None
    passes: int = 1

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s else 0.0


def run_passthrough(
    bootstrap: str,
    source: str,
    sink: str,
    partitions: int,
    expected: int,
    *,
    transactional: bool,
    group: str,
    keep: Callable[[Any], None] | None = None,
    commit_every_s: float = 0.1,
    min_seconds: float = 3.0,
    timeout_s: float = 120,
) -> Passthrough:
    """Consume every message of `source` and produce it unchanged to the same partition of `sink`.

    Transactional: begin → produce … → send_offsets_to_transaction → commit every
    `commit_every_s`, as a Kafka Streams / faust EOS task would (one producer, though).
    One pass over the topic takes a fraction of a second, so passes repeat (seeking back to the
    start) until `min_seconds` of work are done; `keep` sees the first pass only.
    """
    ensure_topics(bootstrap, [sink], partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": not transactional,
            "isolation.level": "read_committed" if transactional else "read_uncommitted",
            # Only matters at the end of a pass (nothing left to fetch): re-fetch soon after a seek.
            "fetch.wait.max.ms": 50,
        }
    )
    pconf: dict[str, Any] = {"bootstrap.servers": bootstrap, "linger.ms": 5}
    if transactional:
        pconf["transactional.id"] = f"{group}-txn"
    producer = Producer(pconf)
    t_sub = time.monotonic()
    try:
        if transactional:
            producer.init_transactions(30)
            producer.begin_transaction()
        consumer.subscribe([source])
        count, commits = 0, 0
        t_first: float | None = None
        last_commit = time.monotonic()
        offsets: dict[int, int] = {}
        passes, busy_s, cpu_s = 0, 0.0, 0.0

        def commit() -> None:
            nonlocal commits, last_commit
            if offsets:
                producer.send_offsets_to_transaction(
                    [TopicPartition(source, p, o) for p, o in offsets.items()],
                    consumer.consumer_group_metadata(),
                    30,
                )
            producer.commit_transaction(30)
            producer.begin_transaction()
            commits += 1
            last_commit = time.monotonic()

        # Each pass is timed from its first message to its last one flushed / committed: the
        # re-fetch after a seek (up to fetch.wait.max.ms) is not the pipeline's business.
        while True:
            target, pass_start = count + expected, None
            while count < target:
                if time.monotonic() - t_sub > timeout_s:
                    raise TimeoutError(f"{sink}: {count}/{target} after {timeout_s:.0f}s")
                batch = consumer.consume(500, 0.1)
                for msg in batch:
                    if msg.error():
                        raise KafkaException(msg.error())
                    if pass_start is None:
                        pass_start, cpu0 = time.monotonic(), time.process_time()
                        t_first = pass_start if t_first is None else t_first
                    if keep is not None:
                        keep(msg)
                    while True:
                        try:
                            producer.produce(
                                sink, value=msg.value(), key=msg.key(), partition=msg.partition()
                            )
                            break
                        except BufferError:
                            producer.poll(0.05)
                    offsets[msg.partition()] = msg.offset() + 1
                    count += 1
                producer.poll(0)
                if transactional and time.monotonic() - last_commit >= commit_every_s:
                    commit()
            if transactional:
                commit()
            elif left := producer.flush(60):
                raise RuntimeError(f"{left} messages not delivered to {sink}")
            assert pass_start is not None
            busy_s += time.monotonic() - pass_start
            cpu_s += time.process_time() - cpu0
            passes, keep = passes + 1, None
            if busy_s >= min_seconds:
                break
            for tp in consumer.assignment():
                consumer.seek(TopicPartition(tp.topic, tp.partition, 0))
    finally:
        consumer.close()
    assert t_first is not None
    return Passthrough(
        label="transactional" if transactional else "plain",
        messages=count,
        wall_s=busy_s,
        join_s=t_first - t_sub,
        passes=passes,
        commits=commits,
        cpu_s=cpu_s,
    )


def run_recompute(raw: list[RawMessage]) -> tuple[float, int]:
    """The processing step alone, in this process: decode + validate + bars, state in dicts."""
    cfg = Settings.from_env().pipeline  # the workers' settings: they inherit our environment
    t = time.perf_counter()
    out, _, _ = recompute(raw, cfg, CONTRACTS)
    return time.perf_counter() - t, len(out.bars) + len(out.alerts) + len(out.dead_letters)
