"""Behaviour of `mdstream services`: real brokers, idempotent up, loopback only, restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from mdstream.services import Endpoints, ServiceError, Settings, ensure_up, status, stop_all
from mdstream.services.kafka import KafkaService


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdstream.cli", "services", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def _pids(settings: Settings | None = None) -> dict[str, int | None]:
    return {s.name: s.pid for s in status(settings=settings)}


def _new_topic(bootstrap: str) -> str:
    topic = f"test-services-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    return topic


def _read_all(bootstrap: str, topic: str, isolation: str, until: bytes) -> list[bytes]:
    """Values from the start of the topic up to and including `until`."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "isolation.level": isolation,
        "enable.auto.commit": False,
    })  # fmt: skip
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while until not in values:
            assert time.monotonic() < deadline, f"only read {values} from {topic}"
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                values.append(message.value())
    finally:
        consumer.close()
    return values


@pytest.mark.services
def test_up_twice_keeps_the_same_processes(services: Endpoints) -> None:
    before = _pids()
    assert all(before.values()), before
    assert ensure_up() == services
    assert _pids() == before


@pytest.mark.services
def test_status_cli_reports_every_service_up(services: Endpoints) -> None:
    done = _cli("status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["kafka", "up"], ["postgres", "up"], ["redis", "up"], ["s3proxy", "up"],
        ["prometheus", "up"],
    ]  # fmt: skip
    assert services.kafka_bootstrap in lines[0] and services.postgres_dsn in lines[1]


@pytest.mark.services
def test_kafka_produce_and_consume(services: Endpoints) -> None:
    topic = _new_topic(services.kafka_bootstrap)
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap, "acks": "all"})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    assert _read_all(services.kafka_bootstrap, topic, "read_uncommitted", b"hello") == [b"hello"]


@pytest.mark.services
def test_kafka_transactions_commit_and_abort(services: Endpoints) -> None:
    topic = _new_topic(services.kafka_bootstrap)
    producer = Producer({
        "bootstrap.servers": services.kafka_bootstrap,
        "transactional.id": f"test-services-{uuid.uuid4().hex[:8]}",
    })  # fmt: skip
    producer.init_transactions(60)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(30)  # on the log before the abort, so only the isolation level can hide it
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(30)

    bootstrap = services.kafka_bootstrap
    assert _read_all(bootstrap, topic, "read_committed", b"committed") == [b"committed"]
    assert _read_all(bootstrap, topic, "read_uncommitted", b"committed") == [
        b"aborted", b"committed"
    ]  # fmt: skip


@pytest.mark.services
async def test_postgres_accepts_queries(services: Endpoints) -> None:
    connection = await asyncpg.connect(services.postgres_dsn)
    try:
        assert await connection.fetchval("SELECT current_database()") == "mdstream"
        assert await connection.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await connection.close()


@pytest.mark.services
async def test_redis_set_get(services: Endpoints) -> None:
    client = redis.asyncio.from_url(services.redis_url)
    try:
        key = f"test-services:{uuid.uuid4().hex}"
        await client.set(key, "v", ex=60)
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) with a LISTEN socket on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.services
def test_ports_listen_on_loopback_only(services: Endpoints) -> None:
    settings = Settings.from_env()
    loopback = "0100007F"  # 127.0.0.1, little-endian hex
    for port in (settings.kafka_port, settings.kafka_controller_port,
                 settings.postgres_port, settings.redis_port, settings.s3_port):  # fmt: skip
        assert _listeners(port) == {loopback}, (port, _listeners(port))


def test_missing_java_or_mvn_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", kafka_port=_free_port_pair()
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(ServiceError, match="`java` not found"):
        KafkaService(settings).start()
    java = shutil.which("java", path=os.defpath + ":/usr/bin")
    assert java is not None
    (bin_dir / "java").symlink_to(java)
    with pytest.raises(ServiceError, match="`mvn` not found"):  # empty cache: jars to resolve
        KafkaService(settings).start()


def _free_port_pair() -> int:
    """A port p with p and p+1 both free (Kafka broker + controller)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as neighbour:
                neighbour.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


@pytest.mark.services
def test_crash_down_and_up_of_an_isolated_stack(tmp_path: Path) -> None:
    """Its own run dir and ports, so the shared services used by other tests stay up."""
    env = {
        **os.environ,
        "MDSTREAM_RUN_DIR": str(tmp_path / "run"),
        "MDSTREAM_KAFKA_PORT": str(_free_port_pair()),
        "MDSTREAM_POSTGRES_PORT": str(_free_port_pair()),
        "MDSTREAM_REDIS_PORT": str(_free_port_pair()),
        "MDSTREAM_S3_PORT": str(_free_port_pair()),
        "MDSTREAM_PROMETHEUS_PORT": str(_free_port_pair()),
    }
    settings = Settings.from_env(env)
    try:
        up = _cli("up", env=env)  # cold start in a separate process: must outlive it
        assert up.returncode == 0, up.stderr
        first = _pids(settings)
        assert all(first.values()), first

        # A crash leaves stale pid files behind; `up` must notice and start fresh processes.
        for pid in first.values():
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        while any(s.pid for s in status(settings=settings)):  # SIGKILL is not instantaneous
            time.sleep(0.1)
        ensure_up(settings=settings)
        second = _pids(settings)
        assert all(second[name] not in (None, first[name]) for name in first), (first, second)

        assert sorted(stop_all(settings=settings)) == [
            "kafka",
            "postgres",
            "prometheus",
            "redis",
            "s3proxy",
        ]
        assert stop_all(settings=settings) == []  # already down: no-op
        down = _cli("status", env=env)
        assert down.returncode == 1
        assert [line.split()[1] for line in down.stdout.splitlines()] == ["down"] * 5

        ensure_up(settings=settings)  # a clean restart reuses the formatted storage and cluster
        assert all(s.up for s in status(settings=settings))
    finally:
        stop_all(settings=settings)
