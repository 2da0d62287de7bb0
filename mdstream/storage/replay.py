"""Reading the raw archive back: into a raw topic, or straight into a recompute.

``mdstream replay --from 2025-11-24T16:00 --to 2025-11-24T17:00 [--instruments AAPL,MSFT]
[--to-topic T | --recompute]``. Objects are read through the manifests only, each checked
against its manifest (SHA-256, row count, offsets): a corrupt object, or an object under the
archive's prefix that no manifest names (foreign), is an :class:`ArchiveCorrupt` error naming
the key — replay never skips anything silently. Messages come back in partition/offset order
with their exact bytes and keys, so a replayed day recomputes the same bars as the live run.

Selection is per raw message (a batch is atomic): a message is replayed when its first tick
lies in ``[from, to)`` and its instrument is selected. Undecodable messages carry no time or
instrument: they are replayed when their object's manifest overlaps the range and no
instrument filter is given; with a filter they are counted and reported, not dropped silently.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import polars as pl
from confluent_kafka import Producer

from mdstream.core.contracts import ContractSet
from mdstream.core.normalise import datetime_to_ns
from mdstream.core.processor import RawMessage, recompute
from mdstream.storage.archive import ArchiveCorrupt, Manifest, read_manifests
from mdstream.storage.objectstore import ObjectStore

__all__ = ["ReplayStats", "check_foreign", "iter_archive", "replay_to_topic", "select"]


@dataclass
class ReplayStats:
    objects: int = 0
    messages: int = 0
    ticks: int = 0
    undecodable_unmatched: int = 0  # undecodable messages a filter could not place


def select(
    manifests: dict[int, list[Manifest]],
    start_ns: int | None,
    end_ns: int | None,
    instruments: Sequence[str] | None,
) -> list[Manifest]:
    """The manifests whose objects may hold selected messages, in partition/offset order."""
    wanted = set(instruments or ())
    out = []
    for chain in manifests.values():
        for m in chain:
            if m.first_tick_ns is not None and m.last_tick_ns is not None:
                if start_ns is not None and m.last_tick_ns < start_ns:
                    continue
                if end_ns is not None and m.first_tick_ns >= end_ns:
                    continue
            elif m.undecodable == 0:
                continue
            if wanted and not wanted & set(m.instruments) and not m.undecodable:
                continue
            out.append(m)
    return out


def check_foreign(store: ObjectStore, topic: str, manifests: dict[int, list[Manifest]]) -> None:
    """Objects under the topic's data prefix that no manifest names are an error."""
    named = {m.object_key for chain in manifests.values() for m in chain}
    foreign = [k for k in store.keys(f"raw/{topic}/") if k not in named]
    if foreign:
        raise ArchiveCorrupt(
            f"{len(foreign)} object(s) under raw/{topic}/ are in no manifest (foreign or "
            f"orphaned; move them away or explain them): {foreign[:5]}"
        )


def _load(store: ObjectStore, m: Manifest) -> pl.DataFrame:
    try:
        body = store.get(m.object_key)
    except KeyError:
        raise ArchiveCorrupt(f"{m.object_key} (manifest {m.start}) is missing") from None
    digest = hashlib.sha256(body).hexdigest()
    if digest != m.sha256 or len(body) != m.size:
        raise ArchiveCorrupt(
            f"{m.object_key}: SHA-256 {digest[:12]}… ({len(body)} bytes) where the manifest "
            f"says {m.sha256[:12]}… ({m.size} bytes): the object was altered"
        )
    try:
        df = pl.read_parquet(io.BytesIO(body))
    except Exception as exc:  # polars raises several types on bad Parquet
        raise ArchiveCorrupt(f"{m.object_key} is not readable Parquet: {exc}") from exc
    offsets = df["offset"]
    if len(df) != m.rows or (len(df) and (offsets.min() < m.start or offsets.max() >= m.end)):
        raise ArchiveCorrupt(f"{m.object_key} holds other offsets than [{m.start}, {m.end})")
    return df


def iter_archive(
    store: ObjectStore,
    topic: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    instruments: Sequence[str] | None = None,
    stats: ReplayStats | None = None,
    progress: Callable[[int, int, ReplayStats], None] | None = None,
) -> Iterator[RawMessage]:
    """The archived messages selected, in partition/offset order, verified."""
    stats = stats if stats is not None else ReplayStats()
    manifests = read_manifests(store, topic)
    check_foreign(store, topic, manifests)
    lo = datetime_to_ns(start) if start else None
    hi = datetime_to_ns(end) if end else None
    chosen = select(manifests, lo, hi, instruments)
    for i, m in enumerate(chosen):
        df = _load(store, m)
        decoded = pl.col("decode_error").is_null()
        keep = decoded
        if lo is not None:
            keep &= pl.col("first_tick_ns") >= lo
        if hi is not None:
            keep &= pl.col("first_tick_ns") < hi
        if instruments:
            keep &= pl.col("instrument").is_in(list(instruments))
            stats.undecodable_unmatched += int(df.filter(~decoded).height)
        else:
            keep |= ~decoded
        picked = df.filter(keep)
        stats.objects += 1
        stats.messages += picked.height
        stats.ticks += int(picked["n_ticks"].sum() or 0)
        for row in picked.select("topic", "partition", "offset", "key", "value").iter_rows():
            yield RawMessage(value=row[4], key=row[3], topic=row[0], partition=row[1],
                             offset=row[2])  # fmt: skip
        if progress:
            progress(i + 1, len(chosen), stats)


def replay_to_topic(bootstrap: str, topic: str, messages: Iterator[RawMessage]) -> int:
    """Send the messages to ``topic``, each to its original partition number (order kept)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
         "compression.type": "lz4"}
    )  # fmt: skip
    partitions = len(producer.list_topics(topic, timeout=30).topics[topic].partitions)
    sent = 0
    for m in messages:
        while True:
            try:
                producer.produce(
                    topic, value=m.value, key=m.key, partition=m.partition % partitions
                )
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"replay: messages not delivered to {topic}")
    return sent


def _progress(done: int, total: int, stats: ReplayStats) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(
        f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done}/{total} objects, "
        f"{stats.messages} messages, {stats.ticks} ticks"
    )
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _when(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a UTC offset, e.g. {text}+00:00")
    return at


def _run(args: argparse.Namespace) -> int:
    from mdstream.services import endpoints
    from mdstream.settings import settings

    topic = args.topic or settings.topics.raw
    stats = ReplayStats()
    messages = iter_archive(
        ObjectStore(),
        topic,
        start=args.from_,
        end=args.to,
        instruments=[s for s in (args.instruments or "").split(",") if s] or None,
        stats=stats,
        progress=_progress,
    )
    started = time.perf_counter()
    if args.recompute:
        out, _, _ = recompute(messages, settings.pipeline, ContractSet.load())
        print(f"recomputed: {len(out.bars)} bars, {len(out.alerts)} alerts, "
              f"{len(out.dead_letters)} dead letters")  # fmt: skip
    else:
        target = args.to_topic or topic
        if target == topic and not args.into_source:
            print("replay: refusing to append to the archived topic itself; pass --to-topic "
                  "or --into-source", file=sys.stderr)  # fmt: skip
            return 2
        replay_to_topic(args.bootstrap or endpoints().kafka_bootstrap, target, messages)
    seconds = time.perf_counter() - started
    print(f"replayed {stats.messages} messages ({stats.ticks} ticks) from {stats.objects} "
          f"objects in {seconds:.1f}s", file=sys.stderr)  # fmt: skip
    if stats.undecodable_unmatched:
        print(f"note: {stats.undecodable_unmatched} undecodable messages in these objects match "
              "no instrument and were not replayed", file=sys.stderr)  # fmt: skip
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay", help="replay the raw archive into a topic or recompute"
    )
    parser.add_argument("--from", dest="from_", type=_when, required=True, help="ISO time, aware")
    parser.add_argument("--to", type=_when, required=True, help="ISO time, aware (exclusive)")
    parser.add_argument("--instruments", default=None, help="comma-separated symbols")
    parser.add_argument("--topic", default=None, help="archived raw topic (default: raw)")
    parser.add_argument("--to-topic", default=None, help="raw topic to replay into")
    parser.add_argument("--into-source", action="store_true", help="allow replaying into --topic")
    parser.add_argument("--recompute", action="store_true", help="recompute bars, print counts")
    parser.add_argument("--bootstrap", default=None)
    parser.set_defaults(func=_run)
