"""The raw archive on real Kafka and s3proxy: once, across SIGKILLs; replay; faults."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from mdstream.bus.kafka import ensure_topics, publish, read_all
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import ContractSet
from mdstream.core.processor import RawMessage, recompute
from mdstream.core.simulate import FeedSpec, generate
from mdstream.services import Endpoints, Settings, ensure_up, stop_all
from mdstream.storage.archive import (
    ArchiveCorrupt,
    Archiver,
    Manifest,
    manifest_chain,
    read_manifests,
)
from mdstream.storage.objectstore import ObjectStore, S3Config
from mdstream.storage.replay import ReplayStats, iter_archive, replay_to_topic

CONTRACTS = ContractSet.load()
CFG = PipelineConfig()


def _manifest(start: int, end: int) -> Manifest:
    return Manifest("t", 0, start, end, f"k{start}", "", 0, 0, 0, 0, [], [], None, None, 0, 0)


def test_manifest_chain_rejects_gaps_and_overlaps() -> None:
    assert [m.start for m in manifest_chain([_manifest(5, 9), _manifest(0, 5)])] == [0, 5]
    with pytest.raises(ArchiveCorrupt, match="gap"):
        manifest_chain([_manifest(0, 5), _manifest(6, 9)])
    with pytest.raises(ArchiveCorrupt, match="overlap"):
        manifest_chain([_manifest(0, 5), _manifest(4, 9)])


def _topic(services: Endpoints, partitions: int = 2) -> str:
    topic = f"test-archive-{uuid.uuid4().hex[:8]}"
    ensure_topics(services.kafka_bootstrap, [topic], partitions)
    return topic


def _check_exactly_once(store: ObjectStore, topic: str, bootstrap: str) -> list[RawMessage]:
    """Manifests contiguous from offset 0 to the end; every message in exactly one object; no
    object outside the manifests. Returns the archived messages."""
    records = read_all(bootstrap, [topic], idle_s=2)
    chains = read_manifests(store, topic)  # raises on a gap or overlap
    ends = {p: max(r.offset for r in records if r.partition == p) + 1
            for p in {r.partition for r in records}}  # fmt: skip
    assert {p: (c[0].start, c[-1].end) for p, c in chains.items()} == {p: (0, e) for p, e in
                                                                       ends.items()}  # fmt: skip
    named = sorted(m.object_key for c in chains.values() for m in c)
    assert sorted(store.keys(f"raw/{topic}/")) == named  # nothing written twice, no orphan
    archived = list(iter_archive(store, topic))
    assert [(m.partition, m.offset, m.value, m.key) for m in archived] == sorted(
        (r.partition, r.offset, r.value, r.key) for r in records
    )
    return archived


@pytest.fixture(scope="module")
def store(services: Endpoints) -> ObjectStore:
    return ObjectStore()


@pytest.mark.services
def test_archive_once_and_replay_reproduces_the_bars(services: Endpoints, store: ObjectStore
                                                     ) -> None:  # fmt: skip
    topic = _topic(services)
    feed = list(generate(FeedSpec(duration_s=6, seed=5)))
    publish(services.kafka_bootstrap, topic, feed, CONTRACTS)
    stats = Archiver(services.kafka_bootstrap, [topic], store, max_messages=150).run(until_idle_s=2)
    assert stats.messages == len(feed) and stats.objects > 4
    archived = _check_exactly_once(store, topic, services.kafka_bootstrap)

    # The garbage messages of the feed are archived too, byte for byte (replay re-parks them).
    garbage = sum(1 for m in feed if isinstance(m.value, bytes))
    manifests = [m for c in read_manifests(store, topic).values() for m in c]
    assert garbage > 0 and sum(m.undecodable for m in manifests) == garbage
    assert sum(m.ticks for m in manifests) == sum(m.n_ticks for m in feed)

    live = [RawMessage(r.value, r.key, r.topic, r.partition, r.offset)
            for r in read_all(services.kafka_bootstrap, [topic], idle_s=2)]  # fmt: skip
    expected, _, _ = recompute(live, CFG, CONTRACTS)
    replayed, _, _ = recompute(archived, CFG, CONTRACTS)
    assert expected.bars and replayed.bars == expected.bars
    assert replayed.dead_letters == expected.dead_letters

    # Into a new raw topic: the same messages per partition, so the same bars from there.
    target = _topic(services)
    assert replay_to_topic(services.kafka_bootstrap, target, iter(archived)) == len(feed)
    again = [RawMessage(r.value, r.key, topic, r.partition, r.offset)
             for r in read_all(services.kafka_bootstrap, [target], idle_s=2)]  # fmt: skip
    assert recompute(again, CFG, CONTRACTS)[0].bars == expected.bars

    # A window and an instrument: only those batches, and the bars of that instrument match.
    start_ns = FeedSpec().start_ns + 2_000_000_000
    from datetime import UTC, datetime

    lo = datetime.fromtimestamp(start_ns / 1e9, UTC)
    hi = datetime.fromtimestamp((start_ns + 4_000_000_000) / 1e9, UTC)
    stats2 = ReplayStats()
    some = list(iter_archive(store, topic, start=lo, end=hi, instruments=["AAPL"], stats=stats2))
    assert some and 0 < stats2.undecodable_unmatched <= garbage  # counted, not hidden
    wanted = {(m.partition, m.offset) for m in feed_batches(live, "AAPL", start_ns,
                                                            start_ns + 4_000_000_000)}  # fmt: skip
    assert {(m.partition, m.offset) for m in some} == wanted


def feed_batches(messages: list[RawMessage], symbol: str, lo: int, hi: int) -> list[RawMessage]:
    out = []
    for m in messages:
        try:
            _, batch = CONTRACTS.decode(m.value)
        except ValueError:
            continue
        first = min(t["timestamp"] for t in batch["ticks"])
        if batch["instrument"]["symbol"] == symbol and lo <= first < hi:
            out.append(m)
    return out


def _archiver_cmd(topic: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mdstream.cli", "archive", "--topic", topic,
            "--max-messages", "40", "--max-age", "0.3", *extra]  # fmt: skip


@pytest.mark.services
@pytest.mark.slow
def test_sigkilled_archiver_writes_every_message_once(services: Endpoints, store: ObjectStore
                                                      ) -> None:  # fmt: skip
    topic = _topic(services, partitions=3)
    feed = list(generate(FeedSpec(duration_s=10, seed=9)))
    sender = threading.Thread(
        target=publish, args=(services.kafka_bootstrap, topic, feed, CONTRACTS),
        kwargs={"pace": 1.0}, daemon=True,
    )  # fmt: skip
    sender.start()
    rng = random.Random(3)
    kills = 0
    while kills < 3:
        proc = subprocess.Popen(_archiver_cmd(topic), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.5, 4.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    sender.join(120)
    done = subprocess.run(_archiver_cmd(topic, "--until-idle", "3"), capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    archived = _check_exactly_once(store, topic, services.kafka_bootstrap)
    assert len(archived) == len(feed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.services
def test_store_down_pauses_the_archiver_and_it_catches_up(services: Endpoints, tmp_path: Path
                                                          ) -> None:  # fmt: skip
    """A private s3proxy (own run dir and port) is stopped under a running archiver."""
    env = {**os.environ, "MDSTREAM_RUN_DIR": str(tmp_path / "run"),
           "MDSTREAM_S3_PORT": str(_free_port())}  # fmt: skip
    settings = Settings.from_env(env)
    ensure_up(["s3proxy"], settings=settings)
    try:
        store = ObjectStore(S3Config.from_env(env), attempts=1)
        topic = _topic(services)
        feed = list(generate(FeedSpec(duration_s=4, seed=4)))
        half = len(feed) // 2
        publish(services.kafka_bootstrap, topic, feed[:half], CONTRACTS)
        archiver = Archiver(services.kafka_bootstrap, [topic], store, max_messages=50,
                            max_age_s=0.2)  # fmt: skip
        worker = threading.Thread(target=archiver.run, daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while archiver.stats.objects < 2:
            assert time.monotonic() < deadline, "the archiver wrote nothing"
            time.sleep(0.1)
        stop_all(["s3proxy"], settings=settings)
        publish(services.kafka_bootstrap, topic, feed[half:], CONTRACTS)
        while archiver.stats.store_errors < 3:
            assert time.monotonic() < deadline + 60, "the archiver never met the down store"
            time.sleep(0.1)
        ensure_up(["s3proxy"], settings=settings)
        while archiver.stats.messages < len(feed) or any(
            b.messages for b in archiver._buffers.values()
        ):
            assert time.monotonic() < deadline + 120, archiver.stats
            time.sleep(0.2)
        archiver.stop()
        worker.join(30)
        assert len(_check_exactly_once(store, topic, services.kafka_bootstrap)) == len(feed)
    finally:
        stop_all(["s3proxy"], settings=settings)


@pytest.mark.services
def test_corrupt_or_foreign_objects_are_clear_errors(services: Endpoints, store: ObjectStore
                                                     ) -> None:  # fmt: skip
    topic = _topic(services, partitions=1)
    publish(services.kafka_bootstrap, topic, list(generate(FeedSpec(duration_s=3, seed=2))),
            CONTRACTS)  # fmt: skip
    Archiver(services.kafka_bootstrap, [topic], store, max_messages=100).run(until_idle_s=1.5)
    chain = read_manifests(store, topic)[0]
    assert len(list(iter_archive(store, topic))) > 0

    foreign = f"raw/{topic}/date=2025-11-24/hour=16/stray.parquet"
    store.put_new(foreign, b"PAR1 not really")
    with pytest.raises(ArchiveCorrupt, match=r"in no manifest.*stray\.parquet"):
        list(iter_archive(store, topic))
    store.delete(foreign)

    victim = chain[len(chain) // 2].object_key
    body = bytearray(store.get(victim))
    body[len(body) // 2] ^= 0xFF
    store._s3.put_object(Bucket=store.bucket, Key=victim, Body=bytes(body))  # behind its back
    with pytest.raises(ArchiveCorrupt, match=f"{victim}.*altered"):
        list(iter_archive(store, topic))

    # The archiver itself refuses to resume over a broken chain, or a manifest that is none.
    hole = f"manifests/{topic}/0000/{chain[1].start:020d}.json"
    store.delete(hole)
    with pytest.raises(ArchiveCorrupt, match="gap"):
        Archiver(services.kafka_bootstrap, [topic], store).run(until_idle_s=0.5)
    store.put_new(hole, b"{not json")
    with pytest.raises(ArchiveCorrupt, match=f"manifest {hole} is not a manifest"):
        list(iter_archive(store, topic))


class _Crash(BaseException):
    """Stands for SIGKILL at one exact point (BaseException: nothing catches it)."""


class _CrashingStore(ObjectStore):
    """Dies on the first put of a key under ``prefix`` (after ``skip`` such puts)."""

    def __init__(self, prefix: str, skip: int) -> None:
        super().__init__()
        self.prefix, self.skip = prefix, skip

    def put_new(self, key: str, body: bytes, **kw: object) -> None:  # type: ignore[override]
        if key.startswith(self.prefix):
            if self.skip == 0:
                raise _Crash(key)
            self.skip -= 1
        super().put_new(key, body, **kw)  # type: ignore[arg-type]


@pytest.mark.services
@pytest.mark.parametrize("dies_before", ["raw/", "manifests/"])
def test_a_flush_cut_short_is_redone_to_the_same_object(
    services: Endpoints, store: ObjectStore, dies_before: str
) -> None:
    """Killed after the pending record (before the object) or after the object (before the
    manifest), in a flush of a size the restart would not choose: it redoes that exact flush."""
    topic = _topic(services, partitions=1)
    feed = list(generate(FeedSpec(duration_s=2, seed=6)))
    publish(services.kafka_bootstrap, topic, feed, CONTRACTS)
    crashing = _CrashingStore(f"{dies_before}{topic}/", skip=1)
    with pytest.raises(_Crash):
        Archiver(services.kafka_bootstrap, [topic], crashing, max_messages=70).run(until_idle_s=2)
    pending = list(store.keys(f"pending/{topic}/"))
    assert len(pending) == 2  # the second flush was cut short
    Archiver(services.kafka_bootstrap, [topic], store, max_messages=500).run(until_idle_s=1.5)
    assert len(_check_exactly_once(store, topic, services.kafka_bootstrap)) == len(feed)
    chain = read_manifests(store, topic)[0]
    assert [m.end - m.start for m in chain[:2]] == [70, 70]  # the redone flush kept its size
