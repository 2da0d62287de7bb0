"""Pipeline benchmark on a local broker: throughput, tick → bar latency, and a Kafka ceiling.

    python -m benchmarks.pipeline [--seconds N] [--rate-scale X] [--partitions P]
        [--live-seconds N] [--skip throughput|latency|ceiling] [--profile PREFIX] [--keep]

It starts Kafka (only Kafka) through `mdstream.services.ensure_up`, so point MDSTREAM_RUN_DIR /
MDSTREAM_KAFKA_PORT at a stack of your own to leave other people's broker alone. Every phase runs
under its own app id and topic prefix; real `faust -A mdstream.app worker` processes do the work.

1. Throughput: a generated feed is published to the raw topic first, then one worker starts; the
   clock runs from the worker's "Ready" until the group's committed offsets cover every raw message.
2. Latency: a fresh app, its worker idle and assigned, gets a live feed paced at 1× whose event
   times are wall-clock now; a read_committed consumer of the bars topic records, for each 1s bar,
   receive time − window end.
3. Ceiling: bare confluent-kafka consume → produce over the same raw messages, without and with
   transactions (commit every ~100 ms), and the pure processing step in-process (no Kafka).

This is a script that prints numbers, not a test: the machine is shared, figures are indicative.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from mdstream.bus.kafka import committed_consumer, ensure_topics, publish, read_all
from mdstream.core.contracts import NORMALIZED, ContractSet, DecodeError
from mdstream.core.processor import RawMessage, recompute
from mdstream.core.simulate import FeedMessage, FeedSpec, generate
from mdstream.services import Settings as ServiceSettings
from mdstream.services import ensure_up
from mdstream.services.kafka import KafkaService
from mdstream.settings import Settings, Topics, deployment_env

FAUST = str(Path(sys.executable).parent / "faust")
PY_SPY = str(Path(sys.executable).parent / "py-spy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTRACTS = ContractSet.load()
# Worker-side settings that shape the latency; the workers inherit our environment.
GRACE_MS = float(os.environ.get("MDSTREAM_GRACE_MS", "1000"))
COMMIT_INTERVAL_S = float(os.environ.get("MDSTREAM_COMMIT_INTERVAL", "0.2"))
ENV_SHOWN = (
    "MDSTREAM_RUN_DIR",
    "MDSTREAM_KAFKA_PORT",
    "MDSTREAM_POSTGRES_PORT",
    "MDSTREAM_REDIS_PORT",
    "MDSTREAM_GRACE_MS",
    "MDSTREAM_COMMIT_INTERVAL",
    "MDSTREAM_BAR_INTERVALS",
)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None) -> float | None:
    """user+system CPU time of a process (its threads included), None when unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------------------------------------
# An isolated app on the shared broker and its worker process


@dataclass
class Pipeline:
    """One app id with its own topics (prefix "<app id>.") and data dirs under `root`."""

    bootstrap: str
    partitions: int
    root: Path
    label: str
    app_id: str = ""
    proc: subprocess.Popen | None = None
    ready_marker: ClassVar[str] = "Worker]: Ready"  # faust's log line once startup is done

    def __post_init__(self) -> None:
        self.app_id = self.app_id or f"bench-{self.label}-{uuid.uuid4().hex[:8]}"
        self.topics = Topics.with_prefix(f"{self.app_id}.")
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "worker.log"

    def create_topics(self) -> None:
        names = (self.topics.raw, *self.topics.outputs())
        ensure_topics(self.bootstrap, names, self.partitions)

    def command(self) -> list[str]:
        """The worker's argv: a subclass runs another program under the same process handling."""
        return [FAUST, "-A", "mdstream.app", "worker", "-l", "info"]

    def worker_env(self) -> dict[str, str]:
        return deployment_env(
            self.app_id, self.bootstrap, self.root / "data", free_port(), self.partitions
        )

    def start_worker(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.worker_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"worker of {self.app_id} died:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 120) -> float:
        """Monotonic time at which the worker logged `ready_marker` (startup finished)."""
        deadline = time.monotonic() + timeout
        while self.ready_marker not in self.log_tail(1 << 20):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker of {self.app_id} not ready:\n{self.log_tail()}")
            time.sleep(0.05)
        return time.monotonic()

    def wait_assigned(self, timeout: float = 60) -> None:
        """Until the group is stable with the raw topic's partitions assigned to a member."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            desc = admin.describe_consumer_groups([self.app_id])[self.app_id].result(timeout=10)
            assigned = {
                tp.partition
                for member in desc.members
                for tp in (member.assignment.topic_partitions if member.assignment else [])
                if tp.topic == self.topics.raw
            }
            if desc.state.name == "STABLE" and len(assigned) == self.partitions:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.app_id}: group {desc.state.name}, assigned {assigned}")
            time.sleep(0.2)

    def stop_worker(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL of the whole process group when it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"worker {self.pid} ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def delete_topics(self) -> None:
        """Best effort: the app's topics, changelogs included (all have its id in their name).

        The broker auto-creates topics a client still asks about, so check and try again.
        """
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for _ in range(3):
            topics = admin.list_topics(timeout=30).topics
            names = [t for t in topics if self.app_id in t]
            if not names:
                return
            for fut in admin.delete_topics(names).values():
                with contextlib.suppress(KafkaException):
                    fut.result(timeout=30)
            time.sleep(1)


class CommitWatcher:
    """Sum of the group's committed offsets on one topic (= messages committed as processed)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def committed(self) -> int:
        return sum(max(tp.offset, 0) for tp in self.consumer.committed(self.tps, timeout=10))

    def close(self) -> None:
        self.consumer.close()


class Profiler:
    """py-spy recording the worker (raw collapsed stacks), summarised when stopped."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [PY_SPY, "record", "--pid", str(pid), "--format", "raw", "-r", "50", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> list[str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            return [f"py-spy produced nothing: {err.strip()[-500:]}"]
        return summarise_stacks(self.out)


# Frames every stack goes through (event loop, CLI, thread bootstrap): no information.
_BOILERPLATE = (
    "asyncio/base_events.py",
    "asyncio/events.py",
    "click/",
    "faust/cli/",
    "mode/worker.py",
    "mode/threads.py",
    "threading.py",
    "(faust)",
    "faust/agents/agent.py",
)


def summarise_stacks(path: Path, top: int = 20) -> list[str]:
    """Top functions by inclusive and by self share of the sampled (non-idle) stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        raw = stack.split(";")
        threads["event-loop thread" if "<module>" in raw[0] else "other threads"] += n
        frames = [f for f in map(_frame_name, raw) if f]
        for name in set(frames):
            if not any(b in name for b in _BOILERPLATE):
                inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return ["no samples"]
    split = ", ".join(f"{k} {100 * n / total:.0f}%" for k, n in threads.most_common())
    lines = [f"{total} samples of busy threads ({split}); inclusive share:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append("self share (leaf frames):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top // 2)]
    return lines


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` → `func (package/module.py)`, without line numbers."""
    func, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif "/work/" in where or where.startswith("/"):
        parts = Path(where).parts
        where = "/".join(parts[-2:])
    if func.startswith("process ") or func.startswith("thread "):
        return ""  # py-spy's per-process/thread root frames
    return f"{func} ({where})"


# ---------------------------------------------------------------------------------------------
# Phase 1: throughput


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


# ---------------------------------------------------------------------------------------------
# Phase 2: tick → bar latency through a read_committed consumer


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


# ---------------------------------------------------------------------------------------------
# Phase 3: the Kafka ceiling (bare consume → produce) and the processing step alone


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


# ---------------------------------------------------------------------------------------------
# Report


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _p50_p99(values: np.ndarray, what: str) -> str:
    return f"p50 {pct(values, 50):.0f} ms  p99 {pct(values, 99):.0f} ms  {what}"


def reproduce_command(argv: Sequence[str], module: str = "benchmarks.pipeline") -> str:
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_SHOWN if k in os.environ)
    cmd = " ".join(shlex.quote(a) for a in ["python", "-m", module, *argv])
    return f"{env} {cmd}".strip()


def report(
    args: argparse.Namespace,
    tp: Throughput | None,
    lat: Latency | None,
    passes: list[Passthrough],
    recomputed: tuple[float, int, int] | None,
) -> None:
    rows: list[tuple[str, str]] = []
    if tp is not None:
        note = " (TIMED OUT: partial)" if tp.timed_out else ""
        bars = ", ".join(f"{n} × {k}" for k, n in sorted(tp.bars.items())) or "0"
        rows += [
            ("1. throughput (1 worker, EOS)", ""),
            (
                "   feed",
                f"{tp.messages} raw msgs, {tp.ticks} ticks ({args.seconds:g}s of feed "
                f"× rate {args.rate_scale:g}), published in {tp.publish_s:.1f}s",
            ),
            ("   worker start → Ready", f"{tp.startup_s:.1f} s"),
            ("   Ready → first commit", f"{tp.first_commit_s:.1f} s"),
            ("   Ready → all committed", f"{tp.wall_s:.1f} s{note}"),
            (
                "   raw messages/s",
                f"{tp.msgs_per_s:,.0f}  (steady 10→90%: {tp.steady_msgs_per_s:,.0f})",
            ),
            ("   ticks/s", f"{tp.ticks_per_s:,.0f}"),
            (
                "   emitted (committed)",
                f"bars {bars}; alerts {tp.alerts}; dead letters {tp.dead_letters}",
            ),
        ]
        if tp.worker_cpu_s is not None and tp.wall_s:
            kafka = (
                f", Kafka JVM {tp.kafka_cpu_s / tp.wall_s:.0%} of a core"
                if tp.kafka_cpu_s is not None
                else ""
            )
            rows.append(
                (
                    "   CPU while processing",
                    f"worker {tp.worker_cpu_s / tp.wall_s:.0%} of a core{kafka}",
                )
            )
    if lat is not None:
        t = lat.total_ms
        rows += [
            ("2. tick → 1s bar latency", ""),
            (
                "   live feed",
                f"{args.live_seconds:g}s at pace 1.0: {lat.live_msgs} msgs, "
                f"{lat.live_ticks} ticks; {lat.bars} bars measured "
                f"({lat.warmup_skipped} in the first {args.warmup:g}s skipped)",
            ),
            (
                "   receive − window_end",
                f"p50 {pct(t, 50):.0f} ms  p99 {pct(t, 99):.0f} ms  "
                f"max {t.max() if len(t) else float('nan'):.0f} ms",
            ),
            (
                "   same − grace",
                f"p50 {pct(t, 50) - GRACE_MS:.0f} ms  "
                f"p99 {pct(t, 99) - GRACE_MS:.0f} ms  "
                f"max {(t.max() if len(t) else float('nan')) - GRACE_MS:.0f} ms",
            ),
            ("   split of (latency − grace):", ""),
            ("   a. feed: closing tick sent", _p50_p99(lat.feed_ms, "after window_end + grace")),
            ("   b. worker: bar emitted", _p50_p99(lat.worker_ms, "after that tick was sent")),
            ("   c. commit + fetch: received", _p50_p99(lat.visible_ms, "after emission")),
        ]
        if abs(lat.start_lag_ms) > 50:
            rows.append(("   (live feed started late by", f"{lat.start_lag_ms:.0f} ms)"))
        if lat.worker_cpu_share is not None:
            rows.append(("   worker CPU at 1× pace", f"{lat.worker_cpu_share:.0%} of a core"))
    if passes or recomputed:
        rows.append(("3. ceiling (same raw messages)", ""))
        for p in passes:
            extra = f", {p.commits} commits" if p.commits else ""
            cpu = f"{p.cpu_s / p.wall_s:.0%} of a core" if p.cpu_s and p.wall_s else "?"
            rows.append(
                (
                    f"   confluent-kafka {p.label}",
                    f"{p.msgs_per_s:,.0f} msgs/s  ({p.passes} passes, {p.messages} in "
                    f"{p.wall_s:.1f}s{extra}; CPU {cpu}; init+join {p.join_s:.1f}s)",
                )
            )
        if recomputed:
            secs, n_out, n_in = recomputed
            if tp is not None and not tp.timed_out:
                streamed = sum(tp.bars.values()) + tp.alerts + tp.dead_letters
                same = "=" if streamed == n_out else "≠ (!)"
                rows.append(
                    (
                        "   outputs check",
                        f"worker committed {streamed} {same} {n_out} recomputed in-process",
                    )
                )
            rows.append(
                (
                    "   processing step in-process",
                    f"{n_in / secs:,.0f} msgs/s  (handle_raw_message alone, dict state, no "
                    f"Kafka/faust/encoding: {n_in} in {secs:.1f}s, {n_out} outputs)",
                )
            )
    width = max(len(k) for k, _ in rows) + 2
    print()
    print("=" * 100)
    print(
        f"mdstream pipeline benchmark — {args.partitions} partitions, rate scale "
        f"{args.rate_scale:g}, grace {GRACE_MS:g} ms, commit interval {COMMIT_INTERVAL_S:g} s, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"load average at start {args.load_before[0]:.2f}, at end {os.getloadavg()[0]:.2f} "
        f"(anything above ~1 means other work shared the {os.cpu_count()} CPUs); "
        f"total run {time.monotonic() - args.t0:.0f} s"
    )
    print("-" * 100)
    for key, value in rows:
        print(f"{key:<{width}}{value}")
    print("-" * 100)
    print("Latency is what a read_committed consumer sees: a 1s bar is final only when its")
    print(f"partition's stream time passes window_end + grace ({GRACE_MS:g} ms, MDSTREAM_GRACE_MS)")
    print("— i.e. when a later tick arrives, after provider latency and batching — and becomes")
    print(
        f"visible only when the worker's transaction commits (every {COMMIT_INTERVAL_S:g} s, "
        "MDSTREAM_COMMIT_INTERVAL)."
    )
    print("So 'receive − window_end' ≥ grace by construction; 'same − grace' is what is added on")
    print("top: (a) the feed (provider latency + batching of the tick that moves stream time past")
    print("the window), (b) the worker (fetch, queueing, processing), (c) the transaction commit")
    print("(up to one commit interval) and the read_committed consumer's fetch; a+b+c ≈ latency −")
    print("grace per bar (percentiles of a sum are not sums of percentiles).")
    print(f"reproduce: {reproduce_command(args.argv)}")
    print("=" * 100)


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="feed seconds pre-published for the throughput runs (default 60)",
    )
    parser.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="multiplies every instrument's trade rate (default 1)",
    )
    parser.add_argument("--partitions", type=int, default=4, help="raw/output partitions")
    parser.add_argument(
        "--live-seconds",
        type=float,
        default=30.0,
        help="length of the paced live feed of the latency run (default 30)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="live-feed seconds whose bars are left out of the latency figures",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="give up waiting for the throughput worker after this (s)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["throughput", "latency", "ceiling"],
        help="skip a phase",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy the workers of phases 1 and 2 (raw stacks to PREFIX.<phase>.txt) and print "
        "their top functions; sampling costs the worker a little CPU",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the topics and the temp dir (worker logs, data dirs)",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    args.t0, args.load_before = time.monotonic(), os.getloadavg()

    say("starting Kafka (ensure_up only=['kafka'])")
    endpoints = ensure_up(only=["kafka"])
    bootstrap = endpoints.kafka_bootstrap
    kafka_pid = KafkaService(ServiceSettings.from_env()).pid()
    say(f"Kafka at {bootstrap} (pid {kafka_pid})")

    root = Path(tempfile.mkdtemp(prefix="mdbench-"))

    def profile_path(phase: str) -> Path | None:
        return Path(f"{args.profile}.{phase}.txt").absolute() if args.profile else None

    pipelines: list[Pipeline] = []
    tp = lat = None
    passes: list[Passthrough] = []
    recomputed = None
    failed = False
    try:
        raw_pipe = Pipeline(bootstrap, args.partitions, root / "throughput", "tp")
        pipelines.append(raw_pipe)
        feed = FeedSpec(duration_s=args.seconds, rate_scale=args.rate_scale, seed=args.seed)
        say(f"generating {args.seconds:g}s of feed at rate scale {args.rate_scale:g}")
        messages = list(generate(feed))
        if "throughput" not in args.skip:
            say(f"phase 1: throughput ({raw_pipe.app_id})")
            tp = run_throughput(
                raw_pipe,
                messages,
                args.timeout,
                kafka_pid,
                profile_path("throughput"),
            )
            say(f"phase 1 done: {tp.msgs_per_s:,.0f} raw msgs/s")
        else:
            raw_pipe.create_topics()
            publish(bootstrap, raw_pipe.topics.raw, messages, CONTRACTS)

        if "latency" not in args.skip:
            live = Pipeline(bootstrap, args.partitions, root / "latency", "lat")
            pipelines.append(live)
            say(f"phase 2: latency ({live.app_id})")
            lat = run_latency(
                live,
                args.live_seconds,
                args.rate_scale,
                args.warmup,
                args.seed,
                profile_path("latency"),
            )
            say(f"phase 2 done: p50 {pct(lat.total_ms, 50):.0f} ms over {lat.bars} bars")

        if "ceiling" not in args.skip:
            say("phase 3: ceiling")
            kept: list[RawMessage] = []

            def keep(msg: Any) -> None:
                kept.append(
                    RawMessage(msg.value(), msg.key(), msg.topic(), msg.partition(), msg.offset())
                )

            for transactional in (False, True):
                kind = "txn" if transactional else "plain"
                passes.append(
                    run_passthrough(
                        bootstrap,
                        raw_pipe.topics.raw,
                        f"{raw_pipe.app_id}.ceiling.{kind}",
                        args.partitions,
                        len(messages),
                        transactional=transactional,
                        group=f"{raw_pipe.app_id}-ceiling-{kind}",
                        keep=None if transactional else keep,
                    )
                )
                say(f"  {kind}: {passes[-1].msgs_per_s:,.0f} msgs/s")
            secs, n_out = run_recompute(kept)
            recomputed = (secs, n_out, len(kept))
            say(f"  in-process step: {len(kept) / secs:,.0f} msgs/s")
    except BaseException:
        failed = True
        for pipe in pipelines:
            if pipe.proc is not None:
                say(f"worker log of {pipe.app_id} ({pipe.log_path}):\n{pipe.log_tail(2000)}")
        raise
    finally:
        for pipe in pipelines:
            pipe.stop_worker()
        if tp is not None and tp.timed_out:
            failed = True  # keep the logs
        if not args.keep and not failed:
            gc.collect()  # destroy idle Kafka clients, which could ask for (and so recreate) topics
            for pipe in pipelines:
                try:
                    pipe.delete_topics()
                except Exception as exc:  # best effort: a dedicated bench broker anyway
                    say(f"could not delete topics of {pipe.app_id}: {exc!r}")
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept {root} (worker logs and data dirs)")
    report(args, tp, lat, passes, recomputed)
    for phase, result in (("throughput", tp), ("latency", lat)):
        if result is not None and result.profile:
            print(f"py-spy of the {phase} worker ({profile_path(phase)}):")
            for line in result.profile:
                print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
