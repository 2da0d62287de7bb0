"""Exactly-once for Faust: closes the gaps of faust-streaming 0.15's transactional processing.

Each class replaces one faust part through faust's own seams (the transport's Consumer/Producer/
TransactionManager classes and the app's TableManager). What each closes:

1. **Commit racing processing.** faust commits from a background task (and from `wait_empty` during
   rebalances) while an agent may be half-way through an event: the event's outputs land in a
   transaction whose offsets do not include it, and a crash right after duplicates them.
   → `GatedConsumer.commit` takes the app's *processing gate*, which agents hold for the whole of
   each event and release only after acking it: a transaction always ends between events.
2. **No flush before commit** (faust #177): table changelog writes sit in faust's producer
   buffer and can spill into the next transaction. → `DrainableBuffer` counts what it has sent, and
   `EosTransactionManager.commit` drains it and flushes every transactional producer first.
3. **Outputs outside the source's topic group** raise KeyError (faust #440). → every send under a
   transaction goes to the producer of the *source* partition being processed.
4. **Errors swallowed, no abort.** faust logs and carries on when begin/commit fail (or when the
   producer of a transaction is missing), leaving local state ahead of what Kafka committed.
   → any failure aborts what it can and crashes the worker; its restart recovers from Kafka.
5. **Local state kept after an unclean shutdown** (Kafka Streams wipes it: KAFKA-7192): RocksDB may
   hold writes of transactions that were aborted. → `EosApp` marks the table dir while running and
   wipes it at start when the mark is still there, so tables are rebuilt from the committed
   changelog (read_committed).
6. **Table offsets never persisted under EOS** (kept under the changelog partition, looked up under
   the source partition), so every restart replays whole changelogs. → `EosTableManager` persists
   them on commit of the co-partitioned source partition.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Mapping
from typing import Any

import faust
from faust.tables.manager import TableManager
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from mdstream.settings import settings as app_settings

log = logging.getLogger(__name__)

UNCLEAN_MARK = "UNCLEAN_SHUTDOWN"


class DrainableBuffer(ProducerBuffer):
    """faust's send buffer, with a count of unfinished sends so that draining is exact."""

    async def _send_pending(self, fut: Any) -> None:
        try:
            await super()._send_pending(fut)
        finally:
            self.pending.task_done()

    async def drain(self) -> None:
        await self.pending.join()


class EosProducer(faust_aiokafka.Producer):
    """Transactional producers (one per source partition) that fail loudly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = DrainableBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app

    def _settings_extra(self) -> Mapping[str, Any]:
        settings = dict(super()._settings_extra())
        if self.app.in_transaction:
            settings["transaction_timeout_ms"] = app_settings.transaction_timeout_ms
        return settings

    async def begin_transaction(self, transactional_id: str) -> None:
        producer = self._transaction_producers.get(transactional_id)
        if producer is None:
            producer = self._new_producer(transactional_id=transactional_id)
            await producer.start()  # init_transactions: fences and aborts a previous owner's
            self._transaction_producers[transactional_id] = producer
            self._trn_locks[transactional_id] = asyncio.Lock()
        async with self._trn_locks[transactional_id]:
            await producer.begin_transaction()

    async def commit_transactions(
        self,
        tid_to_offset_map: Mapping[str, Mapping[TP, int]],
        group_id: str,
        start_new_transaction: bool = True,
    ) -> None:
        await asyncio.gather(
            *(
                self._commit_one(tid, offsets, group_id, start_new_transaction)
                for tid, offsets in tid_to_offset_map.items()
            )
        )

    async def _commit_one(
        self, tid: str, offsets: Mapping[TP, int], group_id: str, start_new: bool
    ) -> None:
        producer = self._transaction_producers.get(tid)
        if producer is None:
            raise RuntimeError(f"no transactional producer {tid} for offsets {dict(offsets)}")
        async with self._trn_locks[tid]:
            try:
                await producer.flush()
                await producer.send_offsets_to_transaction(offsets, group_id)
                await producer.commit_transaction()
            except BaseException:
                await self._abort_quietly(tid, producer)
                raise
            if start_new:
                await producer.begin_transaction()

    async def _abort_quietly(self, tid: str, producer: Any) -> None:
        try:
            await producer.abort_transaction()
        except Exception as exc:  # fenced or broken: the restart's init_transactions aborts it
            log.warning("could not abort transaction %s: %r", tid, exc)


class EosTransactionManager(TransactionManager):
    """Sends go to the transaction of the source partition; commits drain and flush first."""

    def _transactional_id(self, topic: str, partition: int) -> str:
        event = faust.current_event()
        source_topic = event.message.topic if event is not None else topic
        group = self.app.assignor.group_for_topic(source_topic)
        return f"{self.app.conf.id}-{group}-{partition}"

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        if partition is None:
            event = faust.current_event()
            if event is None:
                raise RuntimeError(f"send to {topic} outside an event must name its partition")
            partition = event.message.partition
        return await self.producer.send(
            topic,
            key,
            value,
            partition,
            timestamp,
            headers,
            transactional_id=self._transactional_id(topic, partition),
        )

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        if not offsets:
            return True
        await self.producer.buffer.drain()
        by_tid: dict[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            tid = f"{self.app.conf.id}-{self.app.assignor.group_for_topic(tp.topic)}-{tp.partition}"
            by_tid.setdefault(tid, {})[tp] = offset
        try:
            await self.producer.commit_transactions(
                by_tid, self.app.conf.id, start_new_transaction=start_new_transaction
            )
        except BaseException as exc:
            log.error("transaction commit failed, crashing the worker: %r", exc)
            await self.app.crash(exc)
            raise
        return True


class GatedConsumer(faust_aiokafka.Consumer):
    """Commits happen only between events (see the module docstring, gap 1)."""

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with processing_gate(self.app):
            return await super().commit(topics, start_new_transaction=start_new_transaction)


class EosTransport(faust_aiokafka.Transport):
    Consumer = GatedConsumer
    Producer = EosProducer
    TransactionManager = EosTransactionManager


class EosTableManager(TableManager):
    def on_commit(self, offsets: Mapping[TP, int]) -> None:
        """Persist changelog offsets of the source partitions just committed (co-partitioned)."""
        committed = {tp.partition for tp in offsets}
        pending = self._pending_persisted_offsets
        for changelog_tp in [tp for tp in pending if tp.partition in committed]:
            store, offset = pending.pop(changelog_tp)
            store.set_persisted_offset(changelog_tp, offset)


def processing_gate(app: faust.App) -> asyncio.Lock:
    """The lock an agent holds while it processes one event and that every commit takes."""
    gate = getattr(app, "_mdstream_gate", None)
    if gate is None:
        gate = app._mdstream_gate = asyncio.Lock()  # type: ignore[attr-defined]
    return gate


class EosApp(faust.App):
    """A faust App on the EOS transport, wiping local tables after an unclean shutdown."""

    def _new_transport(self) -> EosTransport:
        return EosTransport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> EosTransport:
        return EosTransport(self.conf.broker_producer, self)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        mark = self.conf.appdir / UNCLEAN_MARK
        if mark.exists():
            log.warning(
                "unclean shutdown detected: wiping %s, tables restore from Kafka",
                self.conf.tabledir,
            )
            shutil.rmtree(self.conf.tabledir, ignore_errors=True)
            self.conf.tabledir.mkdir(parents=True, exist_ok=True)
        mark.touch()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        if self.crash_reason is None:
            (self.conf.appdir / UNCLEAN_MARK).unlink(missing_ok=True)
