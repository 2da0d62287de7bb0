"""Real `faust worker` processes for tests: start, SIGKILL, SIGTERM, wait until caught up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from mdstream.bus import ensure_topics, publish
from mdstream.contracts import ContractSet
from mdstream.settings import Settings, deployment_env
from mdstream.simulate import FeedSpec, generate

FAUST = str(Path(sys.executable).parent / "faust")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    """One isolated pipeline on the shared broker: its own app id, topics and data dirs."""

    bootstrap: str
    root: Path
    partitions: int = 4
    app_id: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)

    def env(self, data_dir: Path, web_port: int) -> dict[str, str]:
        env = deployment_env(self.app_id, self.bootstrap, data_dir, web_port, self.partitions)
        env.update(self.extra_env)
        return env

    @property
    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(self.env(self.root / "unused", 0))
            return Settings.from_env()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def create_topics(self) -> None:
        s = self.settings
        ensure_topics(self.bootstrap, (s.topics.raw, *s.topics.outputs()), self.partitions)

    def worker(self, name: str) -> Worker:
        worker = Worker(name, self, self.root / name, free_port())
        self.workers.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.kill()

    def committed_lag(self) -> int:
        """Messages of the raw topic not yet covered by the group's committed offsets."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.app_id})
        try:
            tps = [TopicPartition(self.settings.topics.raw, p) for p in range(self.partitions)]
            lag = 0
            for tp in consumer.committed(tps, timeout=10):
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                lag += high - max(tp.offset, 0)
            return lag
        finally:
            consumer.close()

    def wait_caught_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (lag := self.committed_lag()) > 0:
            if time.monotonic() > deadline:
                self.dump_tasks()
                raise TimeoutError(
                    f"{self.app_id}: {lag} raw messages still uncommitted; task dumps in "
                    + ", ".join(str(w.log_path) for w in self.workers)
                )
            time.sleep(1)

    def dump_tasks(self) -> None:
        """Ask live workers for a stack dump of every asyncio task (mode: SIGUSR1 → log)."""
        for worker in self.workers:
            if worker.alive():
                os.kill(worker.proc.pid, signal.SIGUSR1)
        time.sleep(3)


@dataclass
class Worker:
    name: str
    deployment: Deployment
    data_dir: Path
    web_port: int
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.deployment.root / f"{self.name}.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts} =====\n".encode())
        self.proc = subprocess.Popen(
            [FAUST, "-A", "mdstream.app", "worker", "-l", "info"],
            env=self.deployment.env(self.data_dir, self.web_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no clean-up, no commit, no flush — a machine losing power."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the clean shutdown path."""
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


class FeedThread(threading.Thread):
    """Publishes the generated feed at `pace` × real time while the test does its worst."""

    def __init__(self, deployment: Deployment, feed: FeedSpec, pace: float) -> None:
        super().__init__(daemon=True)
        self.deployment, self.feed, self.pace = deployment, feed, pace
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sent = publish(
                self.deployment.bootstrap,
                self.deployment.settings.topics.raw,
                generate(self.feed),
                ContractSet.load(),
                pace=self.pace,
            )
        except BaseException as exc:
            self.error = exc
