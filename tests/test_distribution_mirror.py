"""The Pulsar mirror on the real brokers: every committed Kafka record in Pulsar exactly once, in
order per key, through SIGKILLs of the mirror and an unresponsive Pulsar."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from mdstream.bus.kafka import ensure_topics, read_all
from mdstream.core.contracts import ALERT, CONSENSUS, NORMALIZED, ContractSet
from mdstream.distribution.mirror import MirrorStats, PulsarMirror
from mdstream.distribution.pulsar_admin import ensure_layout
from mdstream.distribution.routes import NAMESPACES, TENANT, route
from mdstream.services import Endpoints, ensure_up
from mdstream.services.config import Settings as ServiceSettings
from mdstream.services.pulsar import PulsarService
from mdstream.settings import Topics
from tests.distribution_support import (
    T0,
    Process,
    TransactionalFeed,
    alert,
    bar,
    consensus,
    encode_all,
    group_lag,
    read_pulsar,
    stack_env,
    wait_for,
)

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]
CS = ContractSet.load()


@pytest.fixture(scope="module")
def stack() -> Endpoints:
    return ensure_up(only=["kafka", "pulsar"])


def _feed_records(app_id: str, topics: Topics, windows: int) -> list:
    symbols = [f"Z{app_id[1:6].upper()}{i}" for i in range(4)]
    pairs = []
    for w in range(windows):
        ts = T0 + w * 1_000_000_000
        for i, s in enumerate(symbols):
            pairs.append((topics.normalized, NORMALIZED, bar(s, ts, 100.0 + w * 0.01 + i)))
            if w % 5 == 0:
                pairs.append((topics.consensus, CONSENSUS, consensus(s, 100.0 + w * 0.01, ts)))
            if w % 60 == 0:
                pairs.append((topics.normalized, NORMALIZED, bar(s, ts, 100.0, interval="1m")))
            if w % 25 == i:
                pairs.append((topics.alerts, ALERT, alert(s, ("HIGH", "LOW")[w % 2], ts)))
    return encode_all(CS, pairs)


def _check_exactly_once(stack: Endpoints, topics: Topics, prefix: str) -> int:
    kafka = read_all(stack.kafka_bootstrap, topics.mirrored())
    assert kafka, "the feed committed nothing"
    wanted = {(r.topic, r.partition, r.offset): r for r in kafka}
    pulsar_topics = sorted({route(*CS.decode(r.value)).topic for r in kafka})
    got = [
        m
        for m in read_pulsar(stack.pulsar_url, pulsar_topics)
        if m.properties.get("kafka_topic", "").startswith(prefix)
    ]
    ids = Counter((m.properties["kafka_topic"], int(m.properties["kafka_partition"]),
                   int(m.properties["kafka_offset"])) for m in got)  # fmt: skip
    duplicated = {k: n for k, n in ids.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} records twice in Pulsar, e.g. {list(duplicated)[:5]}"
    assert set(ids) == set(wanted), (
        f"missing {len(set(wanted) - set(ids))}, unexpected {len(set(ids) - set(wanted))}"
    )
    last: dict[tuple[str, str], int] = {}
    for m in got:
        rec = wanted[(m.properties["kafka_topic"], int(m.properties["kafka_partition"]),
                      int(m.properties["kafka_offset"]))]  # fmt: skip
        assert m.value == rec.value  # the same Confluent-framed Avro bytes
        assert m.key == rec.key.decode()
        assert m.event_ms == route(*CS.decode(rec.value)).event_time_ms > 0
        # In order per key: a key's Kafka offsets only grow along its Pulsar topic.
        assert rec.offset > last.get((m.topic, m.key), -1)
        last[(m.topic, m.key)] = rec.offset
    return len(got)


def test_layout_has_deduplication_and_retention(stack: Endpoints) -> None:
    report = ensure_layout(stack.pulsar_admin_url)
    assert set(report) == set(NAMESPACES) == {
        "real-time", "normalized", "corporate-actions", "data-quality"
    }  # fmt: skip
    for namespace, minutes in NAMESPACES.items():
        assert report[namespace]["deduplication"] is True
        assert report[namespace]["retention"]["retentionTimeInMinutes"] == minutes
    assert NAMESPACES["real-time"] == 7 * 24 * 60
    assert NAMESPACES["normalized"] == 2 * 365 * 24 * 60
    assert NAMESPACES["corporate-actions"] == 10 * 365 * 24 * 60
    assert TENANT == "market-data"


def test_mirror_is_exactly_once_through_five_sigkills(stack: Endpoints, tmp_path: Path) -> None:
    app_id = f"m{uuid.uuid4().hex[:10]}"
    topics = Topics.with_prefix(f"{app_id}.")
    ensure_topics(stack.kafka_bootstrap, topics.mirrored(), 2)
    items = _feed_records(app_id, topics, windows=500)
    feed = TransactionalFeed(
        stack.kafka_bootstrap, items, rate=250, size=20, abort_every=7, txn_id=f"{app_id}-feed"
    )
    mirror = Process(["mirror"], stack_env(stack, app_id), tmp_path / "mirror.log")
    rng = random.Random(11)
    mirror.start()
    feed.start()
    try:
        for _ in range(5):
            wait_for(lambda: "mirror: assigned" in mirror.log_text().rsplit("===== start", 1)[-1],
                     60, "the mirror never got its partitions")  # fmt: skip
            time.sleep(rng.uniform(0.5, 2.5))
            assert mirror.alive(), mirror.log_text()[-3000:]
            mirror.kill()
            mirror.start()
        feed.join(120)
        assert feed.error is None, feed.error
        group = f"{app_id}-pulsar-mirror"
        wait_for(lambda: group_lag(stack.kafka_bootstrap, group, topics.mirrored()) == 0, 120,
                 "the mirror did not catch up")  # fmt: skip
        assert mirror.stop() == 0, mirror.log_text()[-3000:]
    finally:
        if mirror.alive():
            mirror.kill()
    assert mirror.starts == 6
    assert _check_exactly_once(stack, topics, app_id) == len(feed.committed)
    # Whether a kill landed between Pulsar's ack and the Kafka commit is up to chance here;
    # the next test makes that window deterministic.
    dropped = mirror.log_text().count("re-sent duplicates so far")
    print(f"restarts in which Pulsar dropped re-sent duplicates: {dropped}")


def test_an_unresponsive_pulsar_pauses_the_mirror_and_it_resumes(
    stack: Endpoints, tmp_path: Path
) -> None:
    app_id = f"o{uuid.uuid4().hex[:10]}"
    topics = Topics.with_prefix(f"{app_id}.")
    ensure_topics(stack.kafka_bootstrap, topics.mirrored(), 2)
    items = _feed_records(app_id, topics, windows=200)
    group = f"{app_id}-pulsar-mirror"
    pulsar_pid = PulsarService(ServiceSettings.from_env()).pid()
    assert pulsar_pid is not None
    mirror = Process(["mirror"], stack_env(stack, app_id), tmp_path / "mirror.log")
    mirror.start()
    try:
        wait_for(lambda: "mirror: assigned" in mirror.log_text(), 60, "mirror not assigned")
        os.kill(pulsar_pid, signal.SIGSTOP)  # the broker stops answering; connections stay open
        try:
            feed = TransactionalFeed(stack.kafka_bootstrap, items, rate=400, txn_id=f"{app_id}-f")
            feed.start()
            feed.join(60)
            assert feed.error is None, feed.error
            time.sleep(8)
            lag = group_lag(stack.kafka_bootstrap, group, topics.mirrored())
            assert lag > 0, "the mirror committed offsets that Pulsar never acknowledged"
            assert mirror.alive(), mirror.log_text()[-3000:]
        finally:
            os.kill(pulsar_pid, signal.SIGCONT)
        wait_for(lambda: group_lag(stack.kafka_bootstrap, group, topics.mirrored()) == 0, 120,
                 "the mirror did not resume after Pulsar came back")  # fmt: skip
        assert "paused" in mirror.log_text()
        assert mirror.stop() == 0, mirror.log_text()[-3000:]
    finally:
        if mirror.alive():
            mirror.kill()
    assert _check_exactly_once(stack, topics, app_id) == len(feed.committed)


def test_a_resend_of_what_pulsar_has_is_dropped_by_the_broker(stack: Endpoints) -> None:
    """The crash window itself, made deterministic: everything was persisted in Pulsar but the
    Kafka commit was lost (offsets rewound to 0). The restarted mirror re-sends it all; the
    broker's deduplication drops every message, and Pulsar still holds each one once."""
    app_id = f"d{uuid.uuid4().hex[:10]}"
    topics = Topics.with_prefix(f"{app_id}.")
    ensure_topics(stack.kafka_bootstrap, topics.mirrored(), 2)
    feed = TransactionalFeed(stack.kafka_bootstrap, _feed_records(app_id, topics, windows=50),
                             rate=5000, txn_id=f"{app_id}-feed")  # fmt: skip
    feed.start()
    feed.join(60)
    assert feed.error is None
    group = f"{app_id}-pulsar-mirror"

    def mirror_until_caught_up() -> MirrorStats:
        mirror = PulsarMirror(stack.kafka_bootstrap, topics.mirrored(), stack.pulsar_url,
                              stack.pulsar_admin_url, group=group, contracts=CS)  # fmt: skip
        deadline = time.monotonic() + 90  # a mirror stuck waiting for acks must not hang the suite

        def done() -> bool:
            lag = group_lag(stack.kafka_bootstrap, group, topics.mirrored())
            return lag == 0 or time.monotonic() > deadline

        return mirror.run(done)

    first = mirror_until_caught_up()
    assert first.mirrored == len(feed.committed) and first.deduplicated == 0
    rewind = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group})
    try:
        meta = rewind.list_topics(timeout=10).topics
        rewind.commit(offsets=[TopicPartition(t, p, 0) for t in topics.mirrored()
                               for p in meta[t].partitions], asynchronous=False)  # fmt: skip
    finally:
        rewind.close()
    second = mirror_until_caught_up()
    assert second.mirrored == 0
    assert second.deduplicated == len(feed.committed)
    assert _check_exactly_once(stack, topics, app_id) == len(feed.committed)
