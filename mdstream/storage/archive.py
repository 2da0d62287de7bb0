"""The raw archive: every message of the raw topic(s), once, as immutable Parquet on S3.

``mdstream archive`` consumes the raw topics (``read_committed``) and writes, per topic
partition, one object per *flush*: the messages of an offset range ``[start, end)`` within one
hour (of the messages' Kafka timestamps)::

    raw/<topic>/date=YYYY-MM-DD/hour=HH/<partition>-<start>-<end>.parquet   the data
    manifests/<topic>/<partition>/<start>.json                            the commit record

One Parquet row per Kafka message: topic, partition, offset, Kafka timestamp, key and the
value's **exact bytes** (what replay sends back), plus a decoded view for analytics (batch id,
provider, instrument, tick count and times, tick columns as lists; ``decode_error`` for bytes
that are no raw batch: they are archived too). The decoding is :func:`decoded_view`: a change
of the raw format touches that one function.

Exactly once, across crashes. The manifests are the archiver's position: on start it reads
each partition's chain of manifests (contiguous by construction: a flush starts where the last
ended) and resumes at its end. A flush writes, in this order, each object write-once (checked
before the put, ``If-None-Match: *``):

1. ``pending/<topic>/<partition>/<start>.json`` — the intended ``end`` and object key;
2. the data object — if a crashed run already wrote it (same key), its offsets are verified
   and it is kept, not written again;
3. the manifest (offsets, object key, SHA-256, rows, ticks, instruments, providers, times);
4. then Kafka's committed offset (consumer lag only; never read back as the position).

A restart that finds a pending record at its resume point flushes exactly up to that record's
``end``, so it recreates the same key: no raw batch is ever written twice and no object is
orphaned. The store being down pauses the archiver (the flush is retried with back-off, the
messages stay in memory, nothing is acknowledged), and it catches up when the store returns.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import logging
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from mdstream.core.batch import TickColumns
from mdstream.core.contracts import RAW_BATCH, ContractSet, DecodeError
from mdstream.storage.objectstore import ObjectExists, ObjectStore, StoreUnavailable

__all__ = [
    "ArchiveCorrupt",
    "ArchiveMessage",
    "Archiver",
    "Manifest",
    "decoded_view",
    "manifest_chain",
    "read_manifests",
    "register",
]

log = logging.getLogger(__name__)

ARCHIVE_SCHEMA = {
    "topic": pl.String(),
    "partition": pl.Int32(),
    "offset": pl.Int64(),
    "kafka_timestamp_ms": pl.Int64(),
    "key": pl.Binary(),
    "value": pl.Binary(),
    "decode_error": pl.String(),
    "batch_id": pl.String(),
    "provider": pl.String(),
    "instrument": pl.String(),
    "published_ns": pl.Int64(),
    "n_ticks": pl.Int32(),
    "first_tick_ns": pl.Int64(),
    "last_tick_ns": pl.Int64(),
    "tick_ts": pl.List(pl.Int64()),
    "is_trade": pl.List(pl.Boolean()),
    "price": pl.List(pl.Float64()),
    "volume": pl.List(pl.Float64()),
    "bid": pl.List(pl.Float64()),
    "ask": pl.List(pl.Float64()),
}


class ArchiveCorrupt(RuntimeError):
    """An object or manifest of the archive is not what the manifests say: never skipped."""


@dataclass(frozen=True)
class ArchiveMessage:
    """One Kafka message as the archive keeps it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Manifest:
    """The commit record of one object: messages at offsets [start, end) of topic/partition."""

    topic: str
    partition: int
    start: int
    end: int
    object_key: str
    sha256: str
    size: int
    rows: int
    ticks: int
    undecodable: int
    instruments: list[str]
    providers: list[str]
    first_tick_ns: int | None
    last_tick_ns: int | None
    first_kafka_ms: int
    last_kafka_ms: int
    written_at: str = ""

    @classmethod
    def parse(cls, key: str, body: bytes) -> Manifest:
        try:
            return cls(**json.loads(body))
        except (ValueError, TypeError) as exc:
            raise ArchiveCorrupt(f"manifest {key} is not a manifest: {exc}") from exc


# ---- pure helpers ---------------------------------------------------------------------------


_TICK_FIELDS = {"tick_ts": "ts", "is_trade": "is_trade", "price": "price", "volume": "volume",
                "bid": "bid", "ask": "ask"}  # fmt: skip


def decoded_view(value: bytes, contracts: ContractSet) -> tuple[dict[str, Any], TickColumns | None]:
    """The analytic columns of one raw message (the only place that knows the raw format):
    its scalars, and its ticks as columns (None when the bytes are no raw batch)."""
    try:
        _, record = contracts.decode(value, RAW_BATCH)
        cols = TickColumns.from_record(record)
    except (DecodeError, KeyError, TypeError, ValueError) as exc:
        return {"decode_error": str(exc)}, None
    return {
        "decode_error": None,
        "batch_id": cols.batch_id,
        "provider": cols.source,
        "instrument": cols.symbol,
        "published_ns": cols.published_ns,
        "n_ticks": len(cols),
        "first_tick_ns": int(cols.ts.min()) if len(cols) else None,
        "last_tick_ns": int(cols.ts.max()) if len(cols) else None,
    }, cols


def frame(messages: Sequence[ArchiveMessage], contracts: ContractSet) -> pl.DataFrame:
    """One row per message; the tick lists are built from flat arrays in one vectorised pass
    (missing prices/sizes/bids/asks, NaN in the columns, become nulls)."""
    scalars: dict[str, list[Any]] = {
        name: [] for name in ARCHIVE_SCHEMA if name not in _TICK_FIELDS
    }
    ticks: list[TickColumns] = []
    rows: list[int] = []
    for i, m in enumerate(messages):
        view, cols = decoded_view(m.value, contracts)
        row = {"topic": m.topic, "partition": m.partition, "offset": m.offset,
               "kafka_timestamp_ms": m.timestamp_ms, "key": m.key, "value": m.value}  # fmt: skip
        for name, values in scalars.items():
            values.append(row[name] if name in row else view.get(name))
        if cols is not None:
            ticks.append(cols)
            rows.append(i)
    base = pl.DataFrame(
        {
            name: pl.Series(name, values, dtype=ARCHIVE_SCHEMA[name])
            for name, values in scalars.items()
        }
    ).with_row_index("_row")
    lengths = np.array([len(t) for t in ticks], dtype=np.int64)
    flat = pl.DataFrame(
        {
            "_row": np.repeat(np.array(rows, dtype=np.uint32), lengths),
            **{
                name: (np.concatenate([getattr(t, attr) for t in ticks]) if ticks else [])
                for name, attr in _TICK_FIELDS.items()
            },
        },
        schema={"_row": pl.UInt32(), **{n: ARCHIVE_SCHEMA[n].inner for n in _TICK_FIELDS}},
    ).with_columns(pl.col("price", "volume", "bid", "ask").fill_nan(None))
    lists = flat.group_by("_row", maintain_order=True).agg(pl.col(*_TICK_FIELDS))
    return base.join(lists, on="_row", how="left").sort("_row").select(list(ARCHIVE_SCHEMA))


def parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def hour_of(timestamp_ms: int) -> datetime:
    at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def object_key(topic: str, partition: int, start: int, end: int, first_ms: int) -> str:
    hour = hour_of(first_ms)
    return (
        f"raw/{topic}/date={hour:%Y-%m-%d}/hour={hour:%H}/"
        f"{partition:04d}-{start:020d}-{end:020d}.parquet"
    )


def manifest_key(topic: str, partition: int, start: int) -> str:
    return f"manifests/{topic}/{partition:04d}/{start:020d}.json"


def pending_key(topic: str, partition: int, start: int) -> str:
    return f"pending/{topic}/{partition:04d}/{start:020d}.json"


def manifest_chain(manifests: Iterable[Manifest]) -> list[Manifest]:
    """One partition's manifests in order; ArchiveCorrupt on a gap or an overlap."""
    chain = sorted(manifests, key=lambda m: m.start)
    for before, after in itertools.pairwise(chain):
        if after.start != before.end:
            kind = "gap" if after.start > before.end else "overlap"
            raise ArchiveCorrupt(
                f"{kind} in the archive of {before.topic}[{before.partition}]: "
                f"[{before.start}, {before.end}) then [{after.start}, {after.end})"
            )
    return chain


# ---- the store side -------------------------------------------------------------------------


def read_manifests(store: ObjectStore, topic: str) -> dict[int, list[Manifest]]:
    """Every partition's manifest chain of ``topic`` (checked contiguous)."""
    found: dict[int, list[Manifest]] = {}
    for key in store.keys(f"manifests/{topic}/"):
        m = Manifest.parse(key, store.get(key))
        if (m.topic, manifest_key(m.topic, m.partition, m.start)) != (topic, key):
            raise ArchiveCorrupt(f"manifest {key} describes {m.topic}[{m.partition}]@{m.start}")
        found.setdefault(m.partition, []).append(m)
    return {p: manifest_chain(ms) for p, ms in sorted(found.items())}


def _offsets_of(body: bytes) -> list[int]:
    return pl.read_parquet(io.BytesIO(body), columns=["offset"])["offset"].to_list()


@dataclass
class _Buffer:
    start: int
    messages: list[ArchiveMessage] = field(default_factory=list)
    nbytes: int = 0
    opened: float = field(default_factory=time.monotonic)
    target_end: int | None = None  # from a pending record left by a crashed run


@dataclass
class ArchiveStats:
    messages: int = 0
    objects: int = 0
    ticks: int = 0
    store_errors: int = 0


class Archiver:
    """One process archiving whole topics (all partitions, assigned, not group-balanced)."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        store: ObjectStore,
        *,
        contracts: ContractSet | None = None,
        max_messages: int = 5000,
        max_bytes: int = 32 << 20,
        max_age_s: float = 10.0,
        group: str = "mdstream-archiver",
    ) -> None:
        self.topics = list(topics)
        self.store = store
        self.contracts = contracts or ContractSet.load()
        self.max_messages, self.max_bytes, self.max_age_s = max_messages, max_bytes, max_age_s
        self.stats = ArchiveStats()
        self._stop = False
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._buffers: dict[tuple[str, int], _Buffer] = {}

    def stop(self) -> None:
        self._stop = True

    def _retry(self, what: str, fn: Any, *args: Any) -> Any:
        """Call the store until it answers: a down store pauses the archiver, loses nothing."""
        delay = 0.2
        while True:
            try:
                return fn(*args)
            except StoreUnavailable as exc:
                self.stats.store_errors += 1
                log.warning(
                    "object store unavailable (%s); retrying in %.1fs: %s", what, delay, exc
                )
                if self._stop:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _resume(self) -> list[TopicPartition]:
        """Positions from the manifests; a pending record at a position fixes the next end."""
        assignment = []
        meta = self._consumer.list_topics(timeout=30).topics
        for topic in self.topics:
            if topic not in meta or meta[topic].error is not None:
                raise RuntimeError(f"raw topic {topic!r} does not exist")
            chains = self._retry("read manifests", read_manifests, self.store, topic)
            for partition in sorted(meta[topic].partitions):
                chain = chains.get(partition, [])
                if chain:
                    position = chain[-1].end
                else:
                    low, _ = self._consumer.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=30
                    )
                    position = low
                buf = _Buffer(position)
                pending = pending_key(topic, partition, position)
                if self._retry("head pending", self.store.exists, pending):
                    body = self._retry("read pending", self.store.get, pending)
                    buf.target_end = int(json.loads(body)["end"])
                    log.info("resuming the crashed flush %s up to %d", pending, buf.target_end)
                self._buffers[(topic, partition)] = buf
                assignment.append(
                    TopicPartition(topic, partition, position if chain else OFFSET_BEGINNING)
                )
        return assignment

    def _due(self, buf: _Buffer, incoming: ArchiveMessage | None) -> bool:
        if not buf.messages:
            return False
        if buf.target_end is not None:
            return buf.messages[-1].offset + 1 >= buf.target_end
        if incoming is not None and hour_of(incoming.timestamp_ms) != hour_of(
            buf.messages[0].timestamp_ms
        ):
            return True
        return (
            len(buf.messages) >= self.max_messages
            or buf.nbytes >= self.max_bytes
            or (incoming is None and time.monotonic() - buf.opened >= self.max_age_s)
        )

    def flush(self, topic: str, partition: int) -> Manifest | None:
        """Write the buffered messages of one partition (steps 1-4 of the module doc)."""
        buf = self._buffers[(topic, partition)]
        if not buf.messages:
            return None
        msgs = buf.messages
        end = msgs[-1].offset + 1
        if buf.target_end is not None and end != buf.target_end:
            raise ArchiveCorrupt(
                f"{topic}[{partition}]: a crashed flush from {buf.start} ended at "
                f"{buf.target_end}, the broker now gives {end}"
            )
        key = object_key(topic, partition, buf.start, end, msgs[0].timestamp_ms)
        df = frame(msgs, self.contracts)
        body = parquet_bytes(df)
        pending = pending_key(topic, partition, buf.start)
        intent = json.dumps({"end": end, "object_key": key}).encode()
        try:
            self._retry("put pending", self.store.put_new, pending, intent)
        except ObjectExists:
            recorded = json.loads(self._retry("read pending", self.store.get, pending))
            if recorded != {"end": end, "object_key": key}:
                raise ArchiveCorrupt(f"{pending} says {recorded}, this flush is {key}") from None
        try:
            self._retry("put object", self.store.put_new, key, body)
        except ObjectExists:
            body = self._retry("read object", self.store.get, key)
            if _offsets_of(body) != [m.offset for m in msgs]:
                raise ArchiveCorrupt(f"{key} exists with other offsets than its flush") from None
        decoded = df.filter(pl.col("decode_error").is_null())
        manifest = Manifest(
            topic=topic,
            partition=partition,
            start=buf.start,
            end=end,
            object_key=key,
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
            rows=len(msgs),
            ticks=int(decoded["n_ticks"].sum() or 0),
            undecodable=len(msgs) - len(decoded),
            instruments=sorted(set(decoded["instrument"].to_list())),
            providers=sorted(set(decoded["provider"].to_list())),
            first_tick_ns=decoded["first_tick_ns"].min(),  # type: ignore[arg-type]
            last_tick_ns=decoded["last_tick_ns"].max(),  # type: ignore[arg-type]
            first_kafka_ms=msgs[0].timestamp_ms,
            last_kafka_ms=msgs[-1].timestamp_ms,
            written_at=datetime.now(UTC).isoformat(),
        )
        mkey = manifest_key(topic, partition, buf.start)
        try:
            self._retry(
                "put manifest", self.store.put_new, mkey, json.dumps(asdict(manifest)).encode()
            )
        except ObjectExists:  # our own put, whose answer the store lost as it went down
            stored = Manifest.parse(mkey, self._retry("read manifest", self.store.get, mkey))
            if asdict(stored) | {"written_at": ""} != asdict(manifest) | {"written_at": ""}:
                raise ArchiveCorrupt(f"{mkey} exists and describes another flush") from None
        self._consumer.commit(offsets=[TopicPartition(topic, partition, end)], asynchronous=False)
        self._buffers[(topic, partition)] = _Buffer(end)
        self.stats.objects += 1
        self.stats.ticks += manifest.ticks
        return manifest

    def _add(self, msg: Message) -> None:
        topic, partition = msg.topic(), msg.partition()
        buf = self._buffers[(topic, partition)]
        item = ArchiveMessage(
            topic, partition, msg.offset(), msg.timestamp()[1], msg.key(), msg.value() or b""
        )
        if item.offset < buf.start:
            return  # below the archived position (cannot happen with an exact seek)
        if self._due(buf, item):
            self.flush(topic, partition)
            buf = self._buffers[(topic, partition)]
        buf.messages.append(item)
        buf.nbytes += len(item.value)
        self.stats.messages += 1
        if buf.target_end is not None and item.offset + 1 >= buf.target_end:
            self.flush(topic, partition)

    def run(self, *, until_idle_s: float | None = None) -> ArchiveStats:
        """Archive until stopped (or, with ``until_idle_s``, until the topics stay quiet)."""
        self._consumer.assign(self._resume())
        quiet_since = time.monotonic()
        try:
            while not self._stop:
                batch = self._consumer.consume(1000, 0.2)
                for msg in batch:
                    if msg.error():
                        raise KafkaException(msg.error())
                    self._add(msg)
                if batch:
                    quiet_since = time.monotonic()
                for (topic, partition), buf in list(self._buffers.items()):
                    if self._due(buf, None):
                        self.flush(topic, partition)
                if until_idle_s is not None and time.monotonic() - quiet_since >= until_idle_s:
                    break
            for topic, partition in list(self._buffers):
                if self._buffers[(topic, partition)].target_end is None:
                    self.flush(topic, partition)
        finally:
            self._consumer.close()
        return self.stats


def _run(args: argparse.Namespace) -> int:
    from mdstream.services import endpoints
    from mdstream.settings import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    topics = args.topic or [settings.topics.raw]
    archiver = Archiver(
        args.bootstrap or endpoints().kafka_bootstrap,
        topics,
        ObjectStore(),
        max_messages=args.max_messages,
        max_age_s=args.max_age,
    )
    signal.signal(signal.SIGTERM, lambda *_: archiver.stop())
    signal.signal(signal.SIGINT, lambda *_: archiver.stop())
    stats = archiver.run(until_idle_s=args.until_idle)
    print(json.dumps(asdict(stats)), file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "archive", help="archive the raw topic(s) to the S3 bucket as immutable Parquet, once"
    )
    parser.add_argument("--topic", action="append", help="raw topic (repeatable; default: raw)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: local)")
    parser.add_argument("--max-messages", type=int, default=5000, help="messages per object")
    parser.add_argument("--max-age", type=float, default=10.0, help="seconds before a flush")
    parser.add_argument(
        "--until-idle", type=float, default=None, help="exit after this many quiet seconds"
    )
    parser.set_defaults(func=_run)
