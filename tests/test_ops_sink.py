"""A sink's operations: its lag from the broker (the sink lag), /readyz, and a stall."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from mdstream.bus.kafka import ensure_topics
from mdstream.ops.sink import SinkOps
from mdstream.ops.top import scrape
from mdstream.services import Endpoints
from tests.workers import free_port

pytestmark = [pytest.mark.services]


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_sink_lag_readiness_and_stall(services: Endpoints) -> None:
    topic, group = f"ops-sink-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    ensure_topics(services.kafka_bootstrap, [topic], 1)
    producer = Producer({"bootstrap.servers": services.kafka_bootstrap})
    for i in range(5):
        producer.produce(topic, value=b"%d" % i)
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": services.kafka_bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    consumer.close()

    port = free_port()
    ops = SinkOps(services.kafka_bootstrap, group, topic, port, probe_s=0.2)
    ops.progress.stall_s = 1.0
    probe = asyncio.create_task(ops.run())
    try:
        await asyncio.sleep(0.5)
        status, report = await asyncio.to_thread(_get, port, "/readyz")
        assert status == 200, report
        lag = scrape(f"http://127.0.0.1:{port}/metrics")["mdstream_consumer_lag"]
        # the registry is the process's: other tests' probes leave their own groups' series
        lag = [series for series in lag if series[0]["group"] == group]
        assert lag == [({"group": group, "topic": topic, "partition": "0"}, 3.0)]
        await asyncio.sleep(1.5)  # lag, and the committed offset has not moved: stalled
        status, report = await asyncio.to_thread(_get, port, "/healthz")
        assert status == 503 and report["checks"]["progress"].startswith("stalled"), report
    finally:
        probe.cancel()
        ops.close()
