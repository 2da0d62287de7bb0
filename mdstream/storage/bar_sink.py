"""The bar sink: NormalizedMarketDataEvent bars from Kafka into PostgreSQL, exactly once.

Not a faust agent, on purpose: the normalized topic is written by transactional producers, so
its offsets have gaps (commit markers), and the EOS stream of `mdstream.bus.eos` processes a
partition strictly offset by offset (a gap means "faust skipped a message, fetch again"): an
agent there would stall at the first marker. A sink into a database does not need Kafka
transactions anyway; it needs its position stored *with* its writes:

* one PostgreSQL transaction per polled batch holds the bar upserts, the rejected messages
  (``sink_dead_letters``, with the reason and the payload) and the next offset of every
  partition in the batch (``sink_offsets``), locked FOR UPDATE;
* messages below the stored offset are skipped, so a replay (a crash before Kafka's commit, a
  rebalance, a rewind) writes nothing twice, whatever Kafka's committed offset says;
* Kafka's committed offset follows after the database commit; it only saves re-reading.

The consumer reads with ``isolation.level=read_committed``: only bars of committed transactions.
Run it with ``mdstream store-bars`` (several processes share the partitions as one group).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from mdstream.core.contracts import NORMALIZED, ContractSet, DecodeError
from mdstream.ops import metrics
from mdstream.storage.bars import bar_row, write_bars
from mdstream.storage.postgres import create_pool
from mdstream.storage.quality_history import record_quality

__all__ = ["BarSink", "SinkStats", "register"]

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    polled: int = 0
    skipped: int = 0  # below the stored offset: already written
    rejected: int = 0
    bars: int = 0  # messages that carried a bar
    changed: int = 0  # rows inserted or replaced by a higher revision
    by_freq: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _parse_bar(
    contracts: ContractSet, msg: Message
) -> tuple[str, tuple[Any, ...], dict[str, Any]] | str:
    """(frequency, row, event) for a good bar, else the dead-letter reason."""
    try:
        _, record = contracts.decode(msg.value() or b"", expected=NORMALIZED)
        return (*bar_row(record), record)
    except (DecodeError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"


class BarSink:
    """One consumer of the normalized topic writing into one PostgreSQL pool."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        pool: asyncpg.Pool,
        *,
        group: str = "mdstream-bar-sink",
        contracts: ContractSet | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.topic, self.pool, self.group = topic, pool, group
        self.contracts = contracts or ContractSet.load()
        self.batch_size = batch_size
        self.stats = SinkStats()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topic])

    async def write_batch(self, messages: list[Message]) -> None:
        """One database transaction for a polled batch (any partitions, each in offset order)."""
        started = time.perf_counter()
        try:
            await self._write_batch(messages)
        except (OSError, asyncpg.PostgresError):
            metrics.SINK_WRITE_ERRORS.labels("bars").inc()
            metrics.STORE_UP.labels("postgres").set(0)
            raise
        metrics.STORE_UP.labels("postgres").set(1)
        metrics.SINK_WRITE_SECONDS.labels("bars").observe(time.perf_counter() - started)

    async def _write_batch(self, messages: list[Message]) -> None:
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for msg in messages:
            by_partition[msg.partition()].append(msg)
        async with self.pool.acquire() as conn, conn.transaction():
            stored = {
                r["partition"]: r["next_offset"]
                for r in await conn.fetch(
                    "SELECT partition, next_offset FROM sink_offsets WHERE consumer = $1 AND "
                    "topic = $2 AND partition = ANY($3::int[]) FOR UPDATE",
                    self.group,
                    self.topic,
                    list(by_partition),
                )
            }
            rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
            rejects = []
            events: list[dict[str, Any]] = []
            for partition, batch in by_partition.items():
                for msg in batch:
                    if msg.offset() < stored.get(partition, 0):
                        self.stats.skipped += 1
                        continue
                    parsed = _parse_bar(self.contracts, msg)
                    if isinstance(parsed, str):
                        rejects.append(
                            (self.topic, partition, msg.offset(), self.group, parsed, msg.key(),
                             msg.value() or b"")
                        )  # fmt: skip
                        continue
                    freq, row, event = parsed
                    rows[freq].append(row)
                    events.append(event)
            await record_quality(conn, events)  # the bars' quality history, same transaction
            for freq, freq_rows in rows.items():
                self.stats.changed += await write_bars(conn, freq, freq_rows)
                metrics.SINK_ROWS.labels("bars", f"bars_{freq}").inc(len(freq_rows))
                self.stats.bars += len(freq_rows)
                self.stats.by_freq[freq] += len(freq_rows)
            if rejects:
                await conn.executemany(
                    'INSERT INTO sink_dead_letters (topic, partition, "offset", consumer, reason, '
                    "key, payload) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    rejects,
                )
                self.stats.rejected += len(rejects)
                metrics.SINK_REJECTED.labels("bars").inc(len(rejects))
            await conn.executemany(
                "INSERT INTO sink_offsets (consumer, topic, partition, next_offset) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) DO UPDATE SET "
                "next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset), "
                "updated_at = clock_timestamp()",
                [
                    (self.group, self.topic, p, batch[-1].offset() + 1)
                    for p, batch in by_partition.items()
                ],
            )
        self.stats.polled += len(messages)

    async def run(
        self, should_stop: Callable[[], bool], *, idle_exit_s: float | None = None
    ) -> None:
        """Poll, write, commit until ``should_stop()`` (or ``idle_exit_s`` with nothing new)."""
        last = time.monotonic()
        while not should_stop():
            messages = await asyncio.to_thread(self.consumer.consume, self.batch_size, 0.5)
            good = []
            for msg in messages:
                if msg.error():
                    raise KafkaException(msg.error())
                good.append(msg)
            if not good:
                if idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                    return
                continue
            last = time.monotonic()
            await self.write_batch(good)
            positions = {}
            for msg in good:
                positions[msg.partition()] = msg.offset() + 1
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in positions.items()],
                asynchronous=True,
            )

    def close(self) -> None:
        self.consumer.close()


async def _main(args: argparse.Namespace) -> None:
    from mdstream.settings import settings

    pool = await create_pool(args.dsn or settings.postgres_dsn, schema=args.schema)
    sink = BarSink(settings.bootstrap, settings.topics.normalized, pool, group=args.group)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ops = None
    if args.metrics_port:
        from mdstream.ops.sink import SinkOps

        ops = SinkOps(settings.bootstrap, args.group, settings.topics.normalized, args.metrics_port)
        probe = asyncio.create_task(ops.run())
    try:
        await sink.run(stop.is_set)
    finally:
        if ops is not None:
            probe.cancel()
            ops.close()
        sink.close()
        await pool.close()
        log.info("bar sink stopped: %s", sink.stats)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "store-bars", help="write the normalized bars topic into PostgreSQL, exactly once"
    )
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: MDSTREAM_POSTGRES_DSN / local)")
    parser.add_argument("--schema", help="PostgreSQL schema (default: the server's search_path)")
    parser.add_argument("--group", default="mdstream-bar-sink", help="Kafka consumer group")
    parser.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port"
    )
    parser.set_defaults(func=lambda args: asyncio.run(_main(args)))
