"""Phase 1, throughput: one worker draining a pre-published feed.

The clock runs from the worker's "Ready" until its committed offsets cover every raw message, so
startup and publishing are reported beside the rate but not in it; benchmarks.compare times its
worker rows with the same function so that the peers' figures compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.pipeline.harness import (
    CONTRACTS,
    CommitWatcher,
    Pipeline,
    Profiler,
    cpu_seconds,
    say,
)
from mdstream.bus.kafka import publish, read_all
from mdstream.core.contracts import NORMALIZED, DecodeError
from mdstream.core.simulate import FeedMessage


@dataclass
class Throughput:
    messages: int
    ticks: int
    publish_s: float
    startup_s: float
    first_commit_s: float
    wall_s: float
    steady_msgs_per_s: float
    committed: int
    timed_out: bool
    worker_cpu_s: float | None
    kafka_cpu_s: float | None
    bars: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    dead_letters: int = 0
    profile: list[str] = field(default_factory=list)

    @property
    def msgs_per_s(self) -> float:
        return self.committed / self.wall_s if self.wall_s else 0.0

    @property
    def ticks_per_s(self) -> float:
        return self.msgs_per_s * self.ticks / self.messages if self.messages else 0.0


def run_throughput(
    pipe: Pipeline,
    messages: list[FeedMessage],
    timeout_s: float,
    kafka_pid: int | None,
    profile_to: Path | None,
    published_s: float | None = None,
) -> Throughput:
    """`published_s`: the caller already published `messages` to the raw topic, in that time
    (benchmarks.compare runs several processors on one copy of the feed)."""
    n_msgs, n_ticks = len(messages), sum(m.n_ticks for m in messages)
    pipe.create_topics()
    if published_s is None:
        t = time.monotonic()
        sent = publish(pipe.bootstrap, pipe.topics.raw, messages, CONTRACTS)
        publish_s = time.monotonic() - t
        assert sent == n_msgs, (sent, n_msgs)
    else:
        publish_s = published_s
    say(f"published {n_msgs} raw messages ({n_ticks} ticks) in {publish_s:.1f}s; starting worker")

    watcher = CommitWatcher(pipe.bootstrap, pipe.app_id, pipe.topics.raw, pipe.partitions)
    profiler: Profiler | None = None
    try:
        t_start = time.monotonic()
        pipe.start_worker()
        t_ready = pipe.wait_ready()
        assert pipe.pid is not None
        cpu0, kcpu0 = cpu_seconds(pipe.pid), cpu_seconds(kafka_pid)
        if profile_to is not None:
            profiler = Profiler(pipe.pid, profile_to)
        say(f"worker {pipe.pid} ready after {t_ready - t_start:.1f}s; waiting for commits")
        first = t10 = t90 = None
        committed, last_report = 0, t_ready
        timed_out = False
        while committed < n_msgs:
            pipe.check_alive()
            now = time.monotonic()
            if now - t_ready > timeout_s:
                timed_out = True
                say(
                    f"TIMEOUT: {committed}/{n_msgs} committed; worker log tail:\n"
                    f"{pipe.log_tail(2500)}"
                )
                break
            committed = watcher.committed()
            now = time.monotonic()
            if committed and first is None:
                first = now
            if t10 is None and committed >= 0.1 * n_msgs:
                t10 = (now, committed)
            if t90 is None and committed >= 0.9 * n_msgs:
                t90 = (now, committed)
            if now - last_report >= 10:
                last_report = now
                rate = committed / (now - t_ready)
                say(f"  {committed}/{n_msgs} committed, {rate:.0f} msg/s so far")
            if committed < n_msgs:
                time.sleep(0.1)
        t_done = time.monotonic()
        cpu1, kcpu1 = cpu_seconds(pipe.pid), cpu_seconds(kafka_pid)
        profile = profiler.stop() if profiler is not None else []
        profiler = None
    finally:
        if profiler is not None:
            profiler.stop()
        watcher.close()
        pipe.stop_worker()
    steady = (t90[1] - t10[1]) / (t90[0] - t10[0]) if t10 and t90 and t90[0] > t10[0] else 0.0
    result = Throughput(
        messages=n_msgs,
        ticks=n_ticks,
        publish_s=publish_s,
        startup_s=t_ready - t_start,
        first_commit_s=(first - t_ready) if first is not None else float("nan"),
        wall_s=t_done - t_ready,
        steady_msgs_per_s=steady,
        committed=committed,
        timed_out=timed_out,
        worker_cpu_s=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        kafka_cpu_s=(kcpu1 - kcpu0) if kcpu0 is not None and kcpu1 is not None else None,
        profile=profile,
    )
    say("worker stopped; counting committed outputs")
    for rec in read_all(pipe.bootstrap, pipe.topics.outputs(), idle_s=2.0):
        if rec.topic == pipe.topics.alerts:
            result.alerts += 1
        elif rec.topic == pipe.topics.dead_letter:
            result.dead_letters += 1
        else:
            try:
                _, bar = CONTRACTS.decode(rec.value, NORMALIZED)
            except DecodeError:
                continue
            result.bars[bar["interval"]] = result.bars.get(bar["interval"], 0) + 1
    return result
