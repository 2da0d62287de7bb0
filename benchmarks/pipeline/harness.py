"""What every phase, and benchmarks.compare, shares: how a worker is run and watched.

An app of its own on the shared broker with a real worker process, the ways to observe it without
touching it (committed offsets, /proc CPU time, py-spy) and the worker-side settings the figures
depend on live here, so that mdstream and its peers are started, stopped and timed the same way.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from mdstream.bus.kafka import ensure_topics
from mdstream.core.contracts import ContractSet
from mdstream.settings import Topics, deployment_env

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


def reproduce_command(argv: Sequence[str], module: str = "benchmarks.pipeline") -> str:
    """The shell line that reruns a benchmark under the environment that shaped its figures."""
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ENV_SHOWN if k in os.environ)
    cmd = " ".join(shlex.quote(a) for a in ["python", "-m", module, *argv])
    return f"{env} {cmd}".strip()


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


# ---------------------------------------------------------------------------------------------
# Watching the worker from outside: its group's committed offsets, py-spy


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
