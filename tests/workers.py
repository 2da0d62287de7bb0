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

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from mdstream.bus.kafka import committed_consumer, ensure_topics, publish
from mdstream.core.contracts import RAW_BATCH, ContractSet
from mdstream.core.simulate import FeedSpec, generate
from mdstream.settings import Settings, deployment_env

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

    def committed_lag(self, ends: dict[int, int] | None = None) -> int:
        """Messages of the raw topic not yet covered by the group's committed offsets, counted
        up to `ends` per partition (default: the end of the log)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.app_id})
        try:
            tps = [TopicPartition(self.settings.topics.raw, p) for p in range(self.partitions)]
            lag = 0
            for tp in consumer.committed(tps, timeout=10):
                end = (ends or {}).get(tp.partition)
                if end is None:
                    _, end = consumer.get_watermark_offsets(tp, timeout=10)
                lag += max(end - max(tp.offset, 0), 0)
            return lag
        finally:
            consumer.close()

    def data_ends(self) -> dict[int, int]:
        """Per raw partition, the offset after its last committed record: a transactional feed
        ends with a commit marker, which no consumer ever gets to commit past."""
        reader = committed_consumer(self.bootstrap)
        topic = self.settings.topics.raw
        try:
            ends = {}
            for p in range(self.partitions):
                _, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                reader.assign([TopicPartition(topic, p, max(high - 500, 0))])
                last = -1
                while (msg := reader.poll(1.0)) is not None and not msg.error():
                    last = msg.offset()
                ends[p] = last + 1
            return ends
        finally:
            reader.close()

    def wait_caught_up(self, timeout: float) -> None:
        """Wait (the feed has ended) until every raw record is covered by committed offsets."""
        deadline = time.monotonic() + timeout
        ends = self.data_ends()
        while (lag := self.committed_lag(ends)) > 0:
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

    def wait_ready(self, timeout: float = 90) -> None:
        """Until this start of the worker logs that it is ready; fails if it dies first."""
        deadline = time.monotonic() + timeout
        while "Worker]: Ready" not in self.log_text().rsplit("===== start", 1)[-1]:
            assert self.alive(), f"{self.name} died:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class FeedThread(threading.Thread):
    """Publishes the generated feed at `pace` × real time while the test does its worst.

    With `transaction_size`, the feed is written in Kafka transactions of that many messages,
    every `abort_every`-th of them aborted: the raw topic then has offsets with no data
    (commit markers, aborted records), as any output of an exactly-once job does.
    """

    def __init__(
        self,
        deployment: Deployment,
        feed: FeedSpec,
        pace: float,
        *,
        transaction_size: int = 0,
        abort_every: int = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.deployment, self.feed, self.pace = deployment, feed, pace
        self.transaction_size, self.abort_every = transaction_size, abort_every
        self.sent = 0
        self.aborted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.transaction_size:
                self._publish_in_transactions()
                return
            self.sent = publish(
                self.deployment.bootstrap,
                self.deployment.settings.topics.raw,
                generate(self.feed),
                ContractSet.load(),
                pace=self.pace,
            )
        except BaseException as exc:
            self.error = exc

    def _publish_in_transactions(self) -> None:
        contracts, topic = ContractSet.load(), self.deployment.settings.topics.raw

        def new_producer() -> Producer:
            producer = Producer(
                {
                    "bootstrap.servers": self.deployment.bootstrap,
                    "transactional.id": f"{self.deployment.app_id}-feed",
                    "linger.ms": 2,
                }
            )
            producer.init_transactions(30)  # fences a failed predecessor, aborting its work
            return producer

        producer = new_producer()
        start_wall, start_feed, n_txn, in_txn = time.monotonic(), None, 0, 0
        for msg in generate(self.feed):
            start_feed = msg.publish_ns if start_feed is None else start_feed
            delay = (msg.publish_ns - start_feed) / 1e9 / self.pace - (
                time.monotonic() - start_wall
            )
            if delay > 0:
                time.sleep(delay)
            value = (
                contracts.encode(RAW_BATCH, msg.value) if isinstance(msg.value, dict) else msg.value
            )
            try:
                if in_txn == 0:
                    producer.begin_transaction()
                in_txn += 1
                producer.produce(topic, value=value, key=msg.key)
                producer.poll(0)
                if in_txn == self.transaction_size:
                    n_txn += 1
                    if self.abort_every and n_txn % self.abort_every == 0:
                        producer.flush(30)  # aborting with sends in flight fails now and then
                        producer.abort_transaction(30)
                        self.aborted += in_txn
                    else:
                        producer.commit_transaction(30)
                        self.sent += in_txn
                    in_txn = 0
            except KafkaException as exc:
                # Seen on a loaded machine: the transaction fails. Its messages are lost to the
                # feed (read_committed never shows them), as with any failed producer.
                print(f"feed: transaction failed, aborting it: {exc}", file=sys.stderr)
                self.aborted += in_txn
                in_txn = 0
                if exc.args[0].txn_requires_abort():
                    producer.abort_transaction(30)
                else:
                    producer = new_producer()
        if in_txn:
            producer.commit_transaction(30)
            self.sent += in_txn
