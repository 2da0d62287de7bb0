"""Consumer lag from the broker: log end (high watermark) − the group's committed offset.

faust's own sensors have no lag figure, and a worker's own view stops when it stalls; this asks
the broker, so any process (ingest, a sink, the worker itself) can watch any group. It never joins
the group and never commits: `committed()` is an OffsetFetch for the group id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from mdstream.ops import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagSnapshot:
    group: str
    at: float  # monotonic s
    ends: dict[tuple[str, int], int]
    committed: dict[tuple[str, int], int]  # partitions without a committed offset: the log start

    @property
    def lag(self) -> dict[tuple[str, int], int]:
        return {tp: max(end - self.committed.get(tp, 0), 0) for tp, end in self.ends.items()}

    @property
    def total(self) -> int:
        return sum(self.lag.values())


class LagMonitor:
    """One probe client per (group, topics); `probe()` blocks (call it in a thread)."""

    def __init__(
        self, bootstrap: str, group: str, topics: Iterable[str], timeout_s: float = 5.0
    ) -> None:
        self.group, self.topics, self.timeout_s = group, tuple(topics), timeout_s
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "socket.timeout.ms": int(timeout_s * 1000),
            }
        )
        self.last: LagSnapshot | None = None
        self.last_ok_at: float | None = None

    def _partitions(self) -> list[TopicPartition]:
        meta = self._consumer.list_topics(timeout=self.timeout_s)
        return [
            TopicPartition(t, p)
            for t in self.topics
            if t in meta.topics and meta.topics[t].error is None
            for p in sorted(meta.topics[t].partitions)
        ]

    def probe(self) -> LagSnapshot | None:
        """Ask the broker; sets the lag gauges. None (and an error count) when it cannot."""
        try:
            tps = self._partitions()
            ends, lows = {}, {}
            for tp in tps:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=self.timeout_s)
                ends[(tp.topic, tp.partition)], lows[(tp.topic, tp.partition)] = high, low
            committed = {}
            for tp in self._consumer.committed(tps, timeout=self.timeout_s) if tps else []:
                key = (tp.topic, tp.partition)
                committed[key] = tp.offset if tp.offset >= 0 else lows[key]
        except KafkaException as exc:
            metrics.LAG_PROBE_ERRORS.labels(self.group).inc()
            log.warning("lag probe of %s failed: %s", self.group, exc)
            return None
        snap = LagSnapshot(self.group, time.monotonic(), ends, committed)
        for (topic, partition), behind in snap.lag.items():
            labels = (self.group, topic, str(partition))
            metrics.CONSUMER_LAG.labels(*labels).set(behind)
            metrics.COMMITTED_OFFSET.labels(*labels).set(committed[(topic, partition)])
            metrics.LOG_END_OFFSET.labels(topic, str(partition)).set(ends[(topic, partition)])
        self.last, self.last_ok_at = snap, snap.at
        return snap

    def close(self) -> None:
        self._consumer.close()
