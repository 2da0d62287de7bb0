"""Phase 2, tick → 1s bar latency as a downstream read_committed consumer sees it.

A live feed paced at 1× with wall-clock event times makes receive time − window end meaningful;
the split into feed, worker and commit + fetch parts shows where the time beyond grace goes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from benchmarks.pipeline.harness import (
    COMMIT_INTERVAL_S,
    CONTRACTS,
    GRACE_MS,
    Pipeline,
    Profiler,
    cpu_seconds,
    say,
)
from mdstream.bus.kafka import committed_consumer, publish
from mdstream.core.contracts import NORMALIZED, DecodeError
from mdstream.core.simulate import FeedMessage, FeedSpec, generate


class BarReader(threading.Thread):
    """Reads the bars topic read_committed from the start, stamping each record on receipt."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.consumer = committed_consumer(bootstrap)
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.received: list[tuple[int, int, bytes]] = []
        self.stopping = threading.Event()
        self.started_polling = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                msg = self.consumer.poll(0.05)
                self.started_polling.set()
                if msg is None:
                    continue
                now = time.time_ns()
                if msg.error():
                    raise KafkaException(msg.error())
                self.received.append((now, msg.partition(), msg.value()))
        except BaseException as exc:
            self.error = exc
        finally:
            self.consumer.close()


@dataclass
class Latency:
    bars: int
    warmup_skipped: int
    total_ms: np.ndarray  # receive − window end
    feed_ms: np.ndarray  # send of the tick that closed the window − (window end + grace)
    worker_ms: np.ndarray  # worker's emission stamp − send of that tick
    visible_ms: np.ndarray  # receive − emission stamp
    live_msgs: int
    live_ticks: int
    start_lag_ms: float
    worker_cpu_share: float | None
    profile: list[str] = field(default_factory=list)


def run_latency(
    pipe: Pipeline,
    live_s: float,
    rate_scale: float,
    warmup_s: float,
    seed: int,
    profile_to: Path | None,
) -> Latency:
    pipe.create_topics()
    reader: BarReader | None = None
    profiler: Profiler | None = None
    sent_ns: list[int] = []
    try:
        pipe.start_worker()
        pipe.wait_ready()
        pipe.wait_assigned()
        assert pipe.pid is not None
        say(f"worker {pipe.pid} ready and assigned; starting read_committed reader")
        reader = BarReader(pipe.bootstrap, pipe.topics.normalized, pipe.partitions)
        reader.start()
        reader.started_polling.wait(30)
        # Event times are wall-clock: the feed starts `lead` from now, once generated.
        lead_ns = int(max(2.0, live_s * 0.1) * 1e9)
        feed = FeedSpec(
            duration_s=live_s, start_ns=time.time_ns() + lead_ns, rate_scale=rate_scale, seed=seed
        )
        messages = list(generate(feed))
        if profile_to is not None:
            profiler = Profiler(pipe.pid, profile_to)
        wait_s = (messages[0].publish_ns - time.time_ns()) / 1e9
        if wait_s > 0:
            time.sleep(wait_s)
        start_lag_ms = (time.time_ns() - messages[0].publish_ns) / 1e6
        say(f"publishing a live feed: {len(messages)} messages over {live_s:.0f}s, pace 1.0")
        cpu0, t0 = cpu_seconds(pipe.pid), time.monotonic()
        publish(
            pipe.bootstrap,
            pipe.topics.raw,
            messages,
            CONTRACTS,
            pace=1.0,
            on_sent=lambda _: sent_ns.append(time.time_ns()),
        )
        cpu1, t1 = cpu_seconds(pipe.pid), time.monotonic()
        # The last windows close only if stream time moves past them: no more ticks, so wait for
        # what can still come (the bars closed by the last ticks) and stop.
        time.sleep(GRACE_MS / 1000 + COMMIT_INTERVAL_S + 2.0)
        pipe.check_alive()
        profile = profiler.stop() if profiler is not None else []
        profiler = None
    finally:
        if profiler is not None:
            profiler.stop()
        if reader is not None:
            reader.stopping.set()
            reader.join(10)
        pipe.stop_worker()
    if reader.error is not None:
        raise reader.error

    bars = []
    for recv_ns, partition, value in reader.received:
        try:
            _, bar = CONTRACTS.decode(value, NORMALIZED)
        except DecodeError:
            continue
        if bar["interval"] == "1s":
            bars.append((recv_ns, partition, bar))
    closer = _window_closers(messages, sent_ns, {b["instrument"]["symbol"]: p for _, p, b in bars})
    warm_until = feed.start_ns + int(warmup_s * 1e9)
    grace_ns = int(GRACE_MS * 1e6)
    total, feed_part, worker_part, visible = [], [], [], []
    skipped = 0
    for recv_ns, partition, bar in bars:
        if bar["window_start"] < warm_until:
            skipped += 1
            continue
        end, emitted = bar["window_end"], bar["timestamp"]
        total.append((recv_ns - end) / 1e6)
        visible.append((recv_ns - emitted) / 1e6)
        closed_by = closer(partition, end + grace_ns)
        if closed_by is not None:
            feed_part.append((closed_by - end - grace_ns) / 1e6)
            worker_part.append((emitted - closed_by) / 1e6)
    cpu_share = (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
    return Latency(
        bars=len(total),
        warmup_skipped=skipped,
        total_ms=np.array(total),
        feed_ms=np.array(feed_part),
        worker_ms=np.array(worker_part),
        visible_ms=np.array(visible),
        live_msgs=len(messages),
        live_ticks=sum(m.n_ticks for m in messages),
        start_lag_ms=start_lag_ms,
        worker_cpu_share=cpu_share,
        profile=profile,
    )


def _window_closers(
    messages: Sequence[FeedMessage], sent_ns: Sequence[int], partition_of: dict[str, int]
) -> Callable[[int, int], int | None]:
    """(partition, stream time) → when we sent the first message that took the partition's stream
    time there, i.e. the message whose processing closed the windows ending before it.

    Stream time is the largest event time seen on a partition; the symbol → partition map comes
    from the bars themselves (each symbol is one key, so one partition).
    """
    per_partition: dict[int, tuple[list[int], list[int]]] = {}
    for msg, at in zip(messages, sent_ns, strict=False):
        partition = partition_of.get(msg.key.decode())
        if partition is None or not isinstance(msg.value, dict) or not msg.value["ticks"]:
            continue
        stream, sends = per_partition.setdefault(partition, ([], []))
        newest = max(t["timestamp"] for t in msg.value["ticks"])
        stream.append(max(newest, stream[-1]) if stream else newest)
        sends.append(at)

    def closer(partition: int, stream_time: int) -> int | None:
        stream, sends = per_partition.get(partition, ([], []))
        i = int(np.searchsorted(stream, stream_time, side="left"))
        return sends[i] if i < len(sends) else None

    return closer
