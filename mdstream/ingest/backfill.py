"""Historical backfill into Kafka: chunked, resumable, idempotent, without transactions.

The raw topics are *inputs* of the exactly-once pipeline and must stay non-transactional, so
idempotence comes from deterministic message ids and a progress file instead:

1. The job (provider, symbols, range, freq, source) is cut into chunks of at most the source's
   `max_span` per symbol. Every message of chunk k gets an id that is a function of the job, the
   chunk and its position (`uuid5`), used as the batch id and sent as the Kafka header
   ``mdstream-backfill-id``.
2. Before publishing chunk k, the progress file records "k started" with the end offsets of every
   target topic. After the producer's flush it records "k done".
3. On resume, a done chunk is skipped; a started one is read back from its recorded offsets, and
   the ids already there are not sent again. A chunk never started is sent whole.

So a crash anywhere (before, during or after the sends of a chunk) neither loses nor duplicates a
message, and re-running a finished job publishes nothing. This needs a source that returns the same
records for the same chunk (files do; a REST provider that revised its history between the crash
and the resume would have its revised chunk re-sent under the old ids where they overlap).

Progress lives in a JSON file (``$MDSTREAM_RUN_DIR/backfill/<job>.json``), replaced atomically
(write, fsync, rename). A file rather than PostgreSQL: a backfill is one process, and it must
run with nothing but Kafka up; the file also shows at a glance what is done. (Two hosts running
the same job would need a shared store; they should not run the same job.)

Where records go: ticks → the raw ticks topic as `RawMarketDataBatch`; provider bars (historical
candles) → the raw bars topic (``md.raw.bars``) as `RawBarBatch`, since the tick topic carries only
trades and quotes and the pipeline builds its own bars from them; unparseable rows → the
dead-letter topic (`DeadLetter`, stage ``backfill``).

A backfill of old data into the *live* raw topic would be older than the pipeline's stream time
and dead-lettered as late: backfill into a deployment of its own (``MDSTREAM_TOPIC_PREFIX``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from mdstream.core.contracts import DEAD_LETTER, RAW_BARS, RAW_BATCH, ContractSet
from mdstream.core.normalise import datetime_to_ns
from mdstream.core.processor import dead_letter
from mdstream.ingest.protocols import HistoricalSource
from mdstream.providers.base import ParseResult

ID_HEADER = "mdstream-backfill-id"
_NS = uuid.UUID("b7c0a8a4-3c1e-4f4f-9a8e-0f1b6c2d9e51")
UNPLACED = "unplaced"
_LEADERLESS = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


@dataclass(frozen=True)
class Job:
    provider: str
    symbols: tuple[str, ...]
    start: datetime
    end: datetime
    freq: str
    source_key: str  # what was read (files, URL): part of the job's identity

    @property
    def job_id(self) -> str:
        text = "|".join(
            [
                self.provider,
                ",".join(self.symbols),
                self.start.isoformat(),
                self.end.isoformat(),
                self.freq,
                self.source_key,
            ]
        )
        return f"{self.provider}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Chunk:
    symbol: str
    start: datetime
    end: datetime

    @property
    def chunk_id(self) -> str:
        if self.symbol == UNPLACED:
            return UNPLACED
        return f"{self.symbol}|{datetime_to_ns(self.start)}|{datetime_to_ns(self.end)}"


def plan_chunks(job: Job, max_span) -> list[Chunk]:
    """Per symbol, [start, end) cut into spans of at most `max_span`."""
    if job.end <= job.start:
        raise ValueError(f"empty range {job.start} .. {job.end}")
    chunks = []
    for symbol in job.symbols:
        at = job.start
        while at < job.end:
            upto = min(at + max_span, job.end)
            chunks.append(Chunk(symbol, at, upto))
            at = upto
    return chunks


class Progress:
    """The job's progress file: chunk id → {"state": "started"|"done", "offsets", counts}."""

    def __init__(self, path: Path, job: Job, batch_size: int) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "job": {**asdict(job), "start": job.start.isoformat(), "end": job.end.isoformat()},
            "batch_size": batch_size,
            "chunks": {},
        }
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("job") != json.loads(json.dumps(self.data["job"])):
                raise ValueError(
                    f"{path} records another job ({stored.get('job')}); "
                    "use a progress file of its own for this one"
                )
            self.data["chunks"] = stored.get("chunks", {})
            # Message ids depend on the batch size: a resumed job keeps the one it started with.
            self.data["batch_size"] = stored.get("batch_size", batch_size)

    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    def chunk(self, chunk_id: str) -> dict[str, Any] | None:
        return self.data["chunks"].get(chunk_id)

    def set(self, chunk_id: str, **entry: Any) -> None:
        self.data["chunks"][chunk_id] = entry
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class TargetTopics:
    ticks: str
    bars: str
    dead_letter: str

    def all(self) -> tuple[str, ...]:
        return (self.ticks, self.bars, self.dead_letter)


@dataclass(frozen=True)
class Message:
    topic: str
    key: bytes
    value: bytes
    message_id: str
    records: int  # ticks, bars or dead letters it carries


class KafkaOutput:
    """The producer side and the read-back a resume needs."""

    def __init__(self, bootstrap: str, topics: TargetTopics) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )
        self._errors: list[str] = []
        self._offsets_client: Consumer | None = None
        self._offset_partitions: list[TopicPartition] = []

    def _partitions(self, consumer: Consumer) -> list[TopicPartition]:
        meta = consumer.list_topics(timeout=30).topics
        missing = [t for t in self.topics.all() if t not in meta or meta[t].error]
        if missing:
            raise RuntimeError(f"topics missing: {missing} (mdstream creates them on start)")
        return [TopicPartition(t, p) for t in self.topics.all() for p in meta[t].partitions]

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"mdstream-backfill-scan-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )

    @staticmethod
    def _high(consumer: Consumer, tp: TopicPartition) -> int:
        """The partition's end offset, waiting out a new topic's leader election."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return consumer.get_watermark_offsets(tp, timeout=30)[1]
            except KafkaException as exc:
                err = exc.args[0]
                if time.monotonic() > deadline or not (
                    err.retriable() or err.code() in _LEADERLESS
                ):
                    raise
                time.sleep(0.2)

    def end_offsets(self) -> dict[str, dict[str, int]]:
        # One long-lived client for these per-chunk queries: creating one costs more than asking.
        if self._offsets_client is None:
            self._offsets_client = self._consumer()
            self._offset_partitions = self._partitions(self._offsets_client)
        ends: dict[str, dict[str, int]] = {}
        for tp in self._offset_partitions:
            ends.setdefault(tp.topic, {})[str(tp.partition)] = self._high(self._offsets_client, tp)
        return ends

    def close(self) -> None:
        if self._offsets_client is not None:
            self._offsets_client.close()
            self._offsets_client = None

    def ids_since(self, offsets: dict[str, dict[str, int]]) -> set[str]:
        """Message ids on the topics from `offsets` up to their current ends."""
        consumer = self._consumer()
        seen: set[str] = set()
        try:
            todo = {}
            assign = []
            for tp in self._partitions(consumer):
                start = offsets.get(tp.topic, {}).get(str(tp.partition), 0)
                high = self._high(consumer, tp)
                if high > start:
                    todo[(tp.topic, tp.partition)] = high
                    assign.append(TopicPartition(tp.topic, tp.partition, start))
            if not assign:
                return seen
            consumer.assign(assign)
            deadline = time.monotonic() + 120
            while todo:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not read back {sorted(todo)} in time")
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaException(msg.error())
                for name, value in msg.headers() or ():
                    if name == ID_HEADER and value is not None:
                        seen.add(value.decode())
                tp_key = (msg.topic(), msg.partition())
                if tp_key in todo and msg.offset() + 1 >= todo[tp_key]:
                    del todo[tp_key]
            return seen
        finally:
            consumer.close()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, message: Message) -> None:
        while True:
            try:
                self._producer.produce(
                    message.topic,
                    value=message.value,
                    key=message.key,
                    headers=[(ID_HEADER, message.message_id.encode())],
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{remaining} undelivered, delivery errors: {errors[:3]}")


class Output(Protocol):
    """Where `run_backfill` sends (KafkaOutput; tests may use another)."""

    def end_offsets(self) -> dict[str, dict[str, int]]: ...

    def ids_since(self, offsets: dict[str, dict[str, int]]) -> set[str]: ...

    def send(self, message: Message) -> None: ...

    def flush(self, timeout_s: float = 60.0) -> None: ...


def chunk_messages(
    job_id: str,
    chunk: Chunk,
    parsed: ParseResult,
    topics: TargetTopics,
    contracts: ContractSet,
    batch_size: int,
    now_ns: int,
) -> Iterator[Message]:
    """The chunk's messages, each with its deterministic id, in a deterministic order."""

    def mid(kind: str, i: int) -> str:
        return str(uuid.uuid5(_NS, f"{job_id}|{chunk.chunk_id}|{kind}|{i}"))

    by_symbol: dict[str, list[dict[str, Any]]] = {}
    provider = ""
    for t in parsed.ticks:
        by_symbol.setdefault(t.symbol, []).append(t.tick)
        provider = t.provider
    for symbol in sorted(by_symbol):
        ticks = by_symbol[symbol]
        for n, i in enumerate(range(0, len(ticks), batch_size)):
            batch_id = mid(f"ticks/{symbol}", n)
            part = ticks[i : i + batch_size]
            record = {
                "batchId": batch_id,
                "timestamp": now_ns,
                "source": provider,
                "instrument": {"symbol": symbol, "exchange": None, "isin": None},
                "ticks": part,
            }
            yield Message(
                topics.ticks,
                symbol.encode(),
                contracts.encode(RAW_BATCH, record),
                batch_id,
                len(part),
            )
    bars: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for b in parsed.bars:
        bars.setdefault((b.symbol, b.interval, b.provider), []).append(
            {
                "start": b.start_ns,
                "open": b.open,
                "high": b.high,
                "low": b.low,
                "close": b.close,
                "volume": b.volume,
                "trade_count": b.trade_count,
                "vwap": b.vwap,
            }
        )
    for (symbol, interval, bar_provider), items in sorted(bars.items()):
        for n, i in enumerate(range(0, len(items), batch_size)):
            batch_id = mid(f"bars/{symbol}/{interval}", n)
            part = items[i : i + batch_size]
            record = {
                "batchId": batch_id,
                "timestamp": now_ns,
                "source": bar_provider,
                "instrument": {"symbol": symbol, "exchange": None, "isin": None},
                "interval": interval,
                "bars": part,
            }
            yield Message(
                topics.bars,
                symbol.encode(),
                contracts.encode(RAW_BARS, record),
                batch_id,
                len(part),
            )
    for n, err in enumerate(parsed.errors):
        record = dead_letter(
            "backfill",
            err.reason,
            err.payload,
            emitted_ns=now_ns,
            source=err.provider,
            key=chunk.symbol.encode(),
        )
        msg_id = mid("error", n)
        yield Message(
            topics.dead_letter,
            chunk.symbol.encode(),
            contracts.encode(DEAD_LETTER, record),
            msg_id,
            1,
        )


@dataclass
class Summary:
    job_id: str
    progress_file: str
    chunks: int = 0
    skipped_done: int = 0
    resumed: int = 0
    ticks: int = 0
    bars: int = 0
    dead_letters: int = 0
    messages: int = 0
    already_published: int = 0
    seconds: float = 0.0
    interrupted: str | None = None
    per_chunk: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def records_per_s(self) -> float:
        return (self.ticks + self.bars) / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        lines = [
            f"backfill {self.job_id}: {self.chunks} chunks "
            f"({self.skipped_done} already done, {self.resumed} resumed)",
            f"  published {self.messages} messages: {self.ticks} ticks, {self.bars} bars, "
            f"{self.dead_letters} dead letters; {self.already_published} messages were already "
            "on the topics (not sent again)",
            f"  {self.seconds:.1f} s, {self.records_per_s:,.0f} records/s; progress: "
            f"{self.progress_file}",
        ]
        if self.interrupted:
            lines.append(f"  INTERRUPTED: {self.interrupted}; run the same command to resume")
        return "\n".join(lines)


class BackfillInterrupted(RuntimeError):
    """The job stopped before its end; its summary says how far it got (the cause is chained)."""

    def __init__(self, summary: Summary) -> None:
        super().__init__(summary.interrupted)
        self.summary = summary


class ProgressBar:
    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.started = time.monotonic()

    def update(self, done: int, records: int) -> None:
        if self.stream is None:
            return
        filled = int(self.width * done / self.total)
        rate = records / max(time.monotonic() - self.started, 1e-9)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} chunks "
            f"{records:,} records {rate:,.0f}/s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


async def run_backfill(
    source: HistoricalSource,
    job: Job,
    output: Output,
    progress: Progress,
    topics: TargetTopics,
    *,
    contracts: ContractSet | None = None,
    bar_stream: TextIO | None = sys.stderr,
    after_send: Callable[[Chunk, int], None] | None = None,
    flush_every: int = 1000,
) -> Summary:
    """Run (or resume) `job`. `after_send(chunk, n)` is called after each message is handed to the
    producer (tests inject failures there); the producer is flushed every `flush_every` messages.
    """
    contracts = contracts or ContractSet.load()
    chunks = plan_chunks(job, source.max_span)
    if hasattr(source, "unplaced"):
        chunks.append(Chunk(UNPLACED, job.start, job.end))
    summary = Summary(job.job_id, str(progress.path), chunks=len(chunks))
    bar = ProgressBar(len(chunks), bar_stream)
    started = time.monotonic()
    done = 0
    try:
        for chunk in chunks:
            entry = progress.chunk(chunk.chunk_id)
            if entry and entry["state"] == "done":
                summary.skipped_done += 1
                done += 1
                bar.update(done, summary.ticks + summary.bars)
                continue
            if chunk.symbol == UNPLACED:
                parsed = await source.unplaced(job.freq)  # type: ignore[attr-defined]
            else:
                parsed = await source.fetch(chunk.symbol, chunk.start, chunk.end, job.freq)
            if entry is None:
                offsets = await asyncio.to_thread(output.end_offsets)
                progress.set(chunk.chunk_id, state="started", offsets=offsets)
                already: set[str] = set()
            else:
                summary.resumed += 1
                already = await asyncio.to_thread(output.ids_since, entry["offsets"])
                offsets = entry["offsets"]
            counts = {"ticks": 0, "bars": 0, "dead_letters": 0, "messages": 0, "skipped": 0}
            sent = 0
            for message in chunk_messages(
                job.job_id, chunk, parsed, topics, contracts, progress.batch_size, time.time_ns()
            ):
                if message.message_id in already:
                    counts["skipped"] += 1
                    continue
                output.send(message)
                sent += 1
                counts["messages"] += 1
                kind = {topics.ticks: "ticks", topics.bars: "bars"}.get(
                    message.topic, "dead_letters"
                )
                counts[kind] += message.records
                if after_send is not None:
                    after_send(chunk, sent)
                if sent % flush_every == 0:
                    await asyncio.to_thread(output.flush)
            await asyncio.to_thread(output.flush)
            progress.set(chunk.chunk_id, state="done", offsets=offsets, **counts)
            summary.ticks += counts["ticks"]
            summary.bars += counts["bars"]
            summary.dead_letters += counts["dead_letters"]
            summary.messages += counts["messages"]
            summary.already_published += counts["skipped"]
            summary.per_chunk.append({"chunk": chunk.chunk_id, **counts})
            done += 1
            bar.update(done, summary.ticks + summary.bars)
    except (Exception, KeyboardInterrupt) as exc:
        summary.interrupted = f"{type(exc).__name__}: {exc}"
        raise BackfillInterrupted(summary) from exc
    finally:
        summary.seconds = time.monotonic() - started
        bar.close()
    return summary


def progress_path(run_dir: Path, job: Job) -> Path:
    return run_dir / "backfill" / f"{job.job_id}.json"


def source_key(paths: Sequence[Path] | None = None, url: str | None = None) -> str:
    """A source's identity for the job id: resolved file paths, or the endpoint."""
    if paths:
        return ";".join(sorted(str(Path(p).resolve()) for p in paths))
    return url or ""
