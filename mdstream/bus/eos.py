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
7. **Changelog end read from a cache.** Under transactions faust takes the "highwater" of a
   changelog from aiokafka's cached last stable offset, unknown (-1) until the partition is fetched:
   a worker taking partitions over may skip restoring them, or crash. →
   `BrokerOffsetsConsumerThread` asks the broker.
8. **Acks forgotten at a rebalance.** faust's consumer drops the acked offsets of revoked
   partitions (all of them, with eager rebalancing) *before* its pre-revocation commit, which so
   commits nothing: partitions this worker keeps are rewound while their open transaction and
   its tables already hold the rewound events, which then count twice. → `GatedConsumer`
   commits and ends the transactions first, and no event is processed from then until the seek
   that ends the rebalance. After it, an event is processed only at or beyond its partition's
   next offset (`process_exactly_once`): what was fetched before the rewind and comes again is
   dropped by offset, never by arrival time, which races with the fetcher.
9. **Messages skipped but acked.** faust's stream acks messages it skips on its own (read while
   flow is suspended, or from an older generation), and after a rewind its fetcher may fill the
   "gap" to where it had read before with acks: both commit messages nobody processed. Its
   "already read" filter then drops what a rewind fetches again. → `GatedConsumer` counts only
   the acks `process_exactly_once` approves, never fills gaps, delivers every fetched message
   (the agent drops duplicates by offset) and fetches a partition again when a hole shows; a
   watchdog does the same for a partition that has messages but makes no progress. faust's
   own `seek` runs on the wrong thread and can be lost: ours runs on the client's thread.
10. **Rebalances waiting for acks that never come.** faust's revocation handler waits until every
   message handed to a stream is acked; one our agent holds back for the rebalance to end (or
   dropped by offset) never is, so the rebalance hung until it timed out and the worker was
   expelled. → `GatedConsumer.wait_empty` takes the processing gate instead: agents ack under
   it, so holding it means no event is half-processed.
11. **Transactional inputs.** With gap filling off (9), the offsets that transaction markers take
   up in an input written transactionally (such as our own outputs) looked like skipped
   messages: the partition was fetched again forever. → The client's thread notes which offsets
   each fetch stepped over (`BrokerOffsetsConsumerThread`); a hole there is skipped and counted
   done, any other hole is fetched again.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import faust
from faust.tables.manager import TableManager
from faust.transport.consumer import TransactionManager, ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message
from mode import Service

from mdstream.ops import metrics
from mdstream.settings import settings as app_settings

if TYPE_CHECKING:
    from mdstream.bus.writeback import WriteBackTable

log = logging.getLogger(__name__)

UNCLEAN_MARK = "UNCLEAN_SHUTDOWN"
STALL_PATIENCE_S = 5.0


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
            # faust calls this for every assigned partition at each rebalance, also for those
            # this worker kept and whose transaction is already open.
            if not producer._txn_manager.is_in_transaction():
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
        metrics.TRANSACTION_ABORTS.inc()
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


class BrokerOffsetsConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The Kafka client's thread, which also sees each partition's fetch stream whole (gap 11).

    A fetch returns every committed data record from the fetch position on, in order: offsets it
    steps over hold no data (transaction markers, aborted records). faust may later drop fetched
    records on its way to the agent, so only here, before that, can "no data" be told from
    "skipped". Everything below runs on this thread, in order with fetches and seeks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per partition: where the fetch stream stands (the offset after the last record it
        #: returned, or where it was sought to); unknown after a rebalance.
        self.fetch_floor: dict[tuple[str, int], int] = {}
        #: Per partition and record offset: the first offset of the run before the record that
        #: the fetch stream stepped over; only runs that are not empty are kept.
        self.data_free: dict[tuple[str, int], dict[int, int]] = {}

    async def _fetch_records(self, consumer: Any, *args: Any, **kwargs: Any) -> Any:
        records = await super()._fetch_records(consumer, *args, **kwargs)
        for tp, batch in records.items():
            key = (tp.topic, tp.partition)
            floor = self.fetch_floor.get(key)
            for record in batch:
                if floor is not None and record.offset > floor:
                    self.data_free.setdefault(key, {})[record.offset] = floor
                floor = record.offset + 1
            if floor is not None:
                self.fetch_floor[key] = floor
        return records

    def seek(self, partition: TP, offset: int) -> None:
        self._ensure_consumer().seek(partition, offset)
        self.fetch_floor[(partition.topic, partition.partition)] = offset

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed)

    async def _seek_to_committed(self) -> Mapping[TP, int]:
        committed = await self._ensure_consumer().seek_to_committed()
        for tp, offset in committed.items():
            if offset and offset > 0:  # aiokafka seeks only these; others start where it resets
                self.fetch_floor[(tp.topic, tp.partition)] = offset
        return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.fetch_floor.clear()  # positions restart from the committed offsets
        for tp in revoked:
            self.data_free.pop((tp.topic, tp.partition), None)
        await super().on_partitions_revoked(revoked)

    async def position(self, tp: TP) -> int:
        return await self.call_thread(self._ensure_consumer().position, tp)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """Ask the broker for the last stable offsets (gap 7).

        Under transactions faust reads aiokafka's *cached* LSO, which is None until a partition
        has been fetched since its assignment; recovery then sees a changelog "highwater" of -1
        and either crashes (persisted offset ahead of it) or skips restoring the table.
        `end_offsets` sends ListOffsets at the consumer's isolation level (read_committed).
        """
        return await self._ensure_consumer().end_offsets(partitions)


class _NoReadOffsets(dict):
    """faust's per-partition "last read offset", which it uses to drop messages it thinks it
    has seen: always unknown here, so every fetched message reaches the agent (gap 9)."""

    def __getitem__(self, tp: TP) -> None:
        return None


class GatedConsumer(faust_aiokafka.Consumer):
    """Commits only between events (gap 1), a clean hand-over at rebalances (gap 8), and only
    acks of events an agent processed, in offset order (gap 9)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set while events may be processed: from the seek that ends a rebalance to the next
        #: revocation.
        self.processing_allowed = asyncio.Event()
        #: Per owned source partition, the next offset to process (0: from the first one there
        #: is). Set by the seek that ends a rebalance, advanced as events are processed.
        self.next_offsets: dict[TP, int] = {}
        self._refetching: dict[TP, tuple[int, float]] = {}
        self._approved: Message | None = None
        self._last_progress: dict[TP, float] = {}

    def _reset_state(self) -> None:
        super()._reset_state()
        self._read_offset = _NoReadOffsets()

    def _new_consumer_thread(self) -> BrokerOffsetsConsumerThread:
        return BrokerOffsetsConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Stop processing and commit everything processed before any partition moves (gap 8)."""
        self.processing_allowed.clear()
        self.next_offsets = {}
        if self.app.in_transaction:
            self.stop_flow()
            self.app.flow_control.suspend()
            self.app.flow_control.clear()
            await self.commit_and_end_transactions()
        for table in write_backs(self.app):
            table.write_back()  # nothing processed since the commit: a no-op, kept for safety
            table.forget()
        await super().on_partitions_revoked(revoked)

    def approve_ack(self, message: Message) -> None:
        self._approved = message

    def ack(self, message: Message) -> bool:
        """Only acks of events an agent processed count (gap 9).

        faust's stream acks messages it skips on its own (read while flow is suspended, or from
        an older generation); committing those would lose them.
        """
        if message is not self._approved:
            return False
        self._approved = None
        return super().ack(message)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Never take faust's word that missing offsets are done (gap 9).

        faust fills offset gaps (meant for transaction markers) with acks, judged by what reached
        the stream. After a rewind the fetcher can jump ahead of the committed offset, and those
        "gaps" are messages nobody processed. `skip_no_data` adds the gaps that are real.
        """

    def no_data_between(self, tp: TP, start: int, end: int) -> bool:
        """Whether the fetch stream showed that offsets [start, end) hold no data (gap 11)."""
        floor = self._thread.data_free.get((tp.topic, tp.partition), {}).get(end)
        return floor is not None and floor <= start

    async def skip_no_data(self, tp: TP, start: int, end: int) -> None:
        """Count offsets [start, end), which hold no data, as done: commits may pass them."""
        await super()._add_gap(tp, start, end - 1)

    async def refetch(self, tp: TP, offset: int) -> None:
        """Fetch `tp` again from `offset`: faust skipped messages we have not processed.

        Messages already queued behind the hole arrive next, so one seek per hole is enough;
        should it not take, `_progress_watchdog` seeks again. The acks of the messages before
        `offset` stay: they were processed, and their effects are in the open transaction,
        which must commit their offsets with them.
        """
        if tp in self._refetching and self._refetching[tp][0] == offset:
            return
        log.info("refetching %s from %d: messages were skipped", tp, offset)
        self._refetching[tp] = (offset, time.monotonic())
        await self.seek(tp, offset)

    @Service.timer(STALL_PATIENCE_S / 2)
    async def _progress_watchdog(self) -> None:
        """Seek a partition back to its next offset when it has messages but makes no progress.

        A seek to the next offset is always safe (duplicates are dropped by offset), and it
        unsticks a partition whose messages faust skipped or whose refetch did not take.
        """
        now = time.monotonic()
        if not self.processing_allowed.is_set():
            self._last_progress.clear()
            return
        owned = [tp for tp in self.next_offsets if self.app.topics.acks_enabled_for(tp.topic)]
        if not owned:
            return  # changelogs are restored by recovery, not processed by agents
        ends = await self.highwaters(*owned)  # from the broker: the client's cache may be empty
        for tp in owned:
            expected, end = self.next_offsets.get(tp), ends.get(tp)
            if expected is None:
                continue
            since = self._last_progress.setdefault(tp, now)
            if end is None or end <= expected or await self._fetched_all(tp, expected, end):
                self._last_progress[tp] = now
            elif now - since >= STALL_PATIENCE_S:
                async with processing_gate(self.app):
                    if self.processing_allowed.is_set() and self.next_offsets.get(tp) == expected:
                        log.warning(
                            "%s stalled at %d for %.0fs with %d messages after it: fetching again",
                            tp,
                            expected,
                            now - since,
                            end - expected,
                        )
                        self._refetching[tp] = (expected, now)
                        await self.seek(tp, expected)
                self._last_progress[tp] = time.monotonic()

    async def _fetched_all(self, tp: TP, expected: int, end: int) -> bool:
        """Whether every record before `end` reached us: what is left are transaction markers
        (the last one of a transactional input stays uncommitted: lag shows it as 1)."""
        if self._thread.fetch_floor.get((tp.topic, tp.partition)) != expected:
            return False
        return await self._thread.position(tp) >= end

    async def _seek(self, partition: TP, offset: int) -> None:
        """Seek on the consumer's own thread (gap 9).

        faust calls aiokafka's `seek` from the event loop's thread while the client runs in its
        own thread: a fetch in flight can overwrite the new position, and the seek is lost.
        """
        thread = self._thread
        await thread.call_thread(thread.seek, partition, offset)

    def processed(self, message: Message) -> None:
        self._thread.data_free.get((message.topic, message.partition), {}).pop(message.offset, None)
        self.next_offsets[message.tp] = message.offset + 1
        self._refetching.pop(message.tp, None)
        self._last_progress[message.tp] = time.monotonic()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        self.next_offsets = {ensure_TP(tp): max(offset or 0, 0) for tp, offset in committed.items()}
        return committed

    async def perform_seek(self) -> None:
        """The seek that ends a rebalance: processing resumes from the committed offsets."""
        await super().perform_seek()
        self.processing_allowed.set()

    async def wait_empty(self) -> None:
        """Wait for no event to be half-processed, then commit (gap 10).

        faust waits here until every message handed to a stream is acked. Ours are acked under
        the processing gate, so holding the gate is the same guarantee. The tracked messages
        left are ones the agent holds back until the rebalance ends, or dropped by offset: never
        acked, they would hold the rebalance until it times out and the worker is expelled.
        """
        async with processing_gate(self.app):
            self._unacked_messages.clear()
        await self.commit_and_end_transactions()

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        """Table state held back by the agents goes into the transactions this commit ends."""
        async with processing_gate(self.app):
            for table in write_backs(self.app):
                table.write_back()
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


async def process_exactly_once(
    app: faust.App, stream: faust.StreamT, handle: Callable[[faust.EventT], Awaitable[None]]
) -> None:
    """Run `handle` on each event of `stream` so that its effects commit exactly once.

    Each event is handled under the processing gate and acked before the gate opens, so commits
    fall between events. Nothing is handled during a rebalance. After it, each partition is
    handled strictly in offset order from its committed offset: what arrives a second time is
    dropped. A hole is skipped when the fetch stream showed it holds no data (transaction
    markers); otherwise faust skipped messages on its own, and the partition is fetched again
    from the first offset not yet handled.
    """
    consumer: GatedConsumer = app.consumer
    async for event in stream.noack().events():
        message = event.message
        tp, offset = message.tp, message.offset
        while True:
            await consumer.processing_allowed.wait()
            async with processing_gate(app):
                if not consumer.processing_allowed.is_set():
                    continue  # a rebalance began while we waited for the gate
                expected = consumer.next_offsets.get(tp)
                if expected is None or offset < expected:
                    break  # not ours any more, or handled already
                if offset > expected:
                    if not consumer.no_data_between(tp, expected, offset):
                        await consumer.refetch(tp, expected)
                        break
                    await consumer.skip_no_data(tp, expected, offset)
                await handle(event)
                consumer.approve_ack(message)
                event.ack()
                consumer.processed(message)
                break


def write_backs(app: faust.App) -> list[WriteBackTable]:
    """The app's write-back tables, written at every commit (`mdstream.bus.writeback`)."""
    tables = getattr(app, "_mdstream_write_backs", None)
    if tables is None:
        tables = app._mdstream_write_backs = []  # type: ignore[attr-defined]
    return tables


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
