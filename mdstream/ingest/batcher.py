"""Raw ticks → RawMarketDataBatch messages on Kafka, and bad frames → DeadLetter records.

Ticks are grouped per (provider, instrument) into one batch bounded by a tick count and a delay
of a few milliseconds: faust's cost is per message, so batches are how the pipeline keeps up, and
the delay bound keeps the latency ingestion adds small. The producer is idempotent (no duplicates
from its own retries) but not transactional: the pipeline reads its input topic as plain records.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from mdstream.core.contracts import DEAD_LETTER, RAW_BATCH, ContractSet
from mdstream.ops import metrics
from mdstream.ops.labels import reason_class
from mdstream.ops.throttle import Actions, coalesce
from mdstream.providers.base import FrameError, ProviderTick

log = logging.getLogger(__name__)

# (provider, symbol, provider timestamps of the batch's ticks, ns when Kafka acknowledged it)
OnDelivered = Callable[[str, str, list[int], int], None]


@dataclass(frozen=True)
class BatchPolicy:
    max_ticks: int = 500
    max_delay_s: float = 0.005


class PublishError(RuntimeError):
    """Kafka did not acknowledge some messages."""


class RawBatcher:
    """The TickSink of the streaming adapters. Use from one asyncio loop; `close()` when done."""

    def __init__(
        self,
        bootstrap: str,
        raw_topic: str,
        dead_letter_topic: str,
        contracts: ContractSet,
        policy: BatchPolicy | None = None,
        on_delivered: OnDelivered | None = None,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.raw_topic = raw_topic
        self.dead_letter_topic = dead_letter_topic
        self.policy = policy or BatchPolicy()
        self._contracts = contracts
        self._on_delivered = on_delivered
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 1,
                "compression.type": "lz4",
                **(producer_config or {}),
            }
        )
        self._buffers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.delivery_errors = 0
        self.batches = 0
        #: Set by the throttle controller (`mdstream.ops.backpressure`); unthrottled by default.
        self.actions = Actions(coalesce_quotes=False, batch_scale=1, paused=False)
        # Delivery reports are served on this thread, so acknowledgements are timed when they
        # arrive, not when the event loop next gets round to polling.
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="raw-batcher-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop_polling.is_set():
            self._producer.poll(0.05)

    async def submit(self, tick: ProviderTick) -> None:
        actions = self.actions
        if actions.paused:  # throttled: a non-priority provider while the workers lag
            metrics.THROTTLED_TICKS.labels(tick.provider, "paused").inc()
            return
        key = (tick.provider, tick.symbol)
        buffer = self._buffers.setdefault(key, [])
        if actions.coalesce_quotes:
            if coalesce(buffer, tick.tick):
                metrics.THROTTLED_TICKS.labels(tick.provider, "coalesced").inc()
        else:
            buffer.append(tick.tick)
        if len(buffer) >= self.policy.max_ticks * actions.batch_scale:
            self._flush(key)
        elif len(buffer) == 1:
            loop = asyncio.get_running_loop()
            delay = self.policy.max_delay_s * actions.batch_scale
            self._timers[key] = loop.call_later(delay, self._flush, key)

    async def dead_letter(self, error: FrameError) -> None:
        record = {
            "timestamp": time.time_ns(),
            "stage": "ingest",
            "reason": error.reason,
            "source_topic": None,
            "source_partition": None,
            "source_offset": None,
            "source": error.provider,
            "key": None,
            "payload": error.payload,
        }
        value = self._contracts.encode(DEAD_LETTER, record)
        self._produce(self.dead_letter_topic, value, error.provider.encode(), None)
        metrics.DEAD_LETTERS.labels("ingest", error.provider, reason_class(error.reason)).inc()

    def _flush(self, key: tuple[str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        ticks = self._buffers.pop(key, None)
        if not ticks:
            return
        provider, symbol = key
        record = {
            "batchId": str(uuid.uuid4()),
            "timestamp": time.time_ns(),
            "source": provider,
            "instrument": {"symbol": symbol, "exchange": None, "isin": None},
            "ticks": ticks,
        }
        value = self._contracts.encode(RAW_BATCH, record)
        stamps = [t["provider_timestamp"] for t in ticks]
        self._produce(
            self.raw_topic,
            value,
            symbol.encode(),
            partial(self._delivered, provider, symbol, stamps),
        )
        self.batches += 1
        metrics.INGEST_BATCHES.labels(provider).inc()

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        on_delivery: Callable[[KafkaError | None, Message], None] | None,
    ) -> None:
        kwargs: dict[str, Any] = {"value": value, "key": key}
        kwargs["on_delivery"] = on_delivery or partial(self._delivered, None, "", [])
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:  # local queue full: back-pressure until Kafka catches up
                time.sleep(0.01)

    def _delivered(
        self,
        provider: str | None,
        symbol: str,
        stamps: list[int],
        err: KafkaError | None,
        msg: Message,
    ) -> None:
        if err is not None:
            self.delivery_errors += 1
            metrics.PUBLISH_ERRORS.labels(provider or "dead-letter").inc()
            log.error("Kafka did not acknowledge a message to %s: %s", msg.topic(), err)
            return
        if provider is None:
            return
        acked = time.time_ns()
        latency = metrics.INGEST_LATENCY.labels(provider)
        for stamp in stamps:
            latency.observe(max(0, acked - stamp) / 1e9)
        metrics.PUBLISHED_TICKS.labels(provider).inc(len(stamps))
        if self._on_delivered is not None:
            self._on_delivered(provider, symbol, stamps, acked)

    def pending_ticks(self) -> int:
        return sum(len(b) for b in self._buffers.values())

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Publish every buffered tick and wait until Kafka acknowledged everything."""
        for key in list(self._buffers):
            self._flush(key)
        remaining = await asyncio.to_thread(self._producer.flush, timeout_s)
        if remaining:
            raise PublishError(f"{remaining} messages not acknowledged within {timeout_s} s")
        if self.delivery_errors:
            raise PublishError(f"{self.delivery_errors} messages were rejected by Kafka")

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            self._stop_polling.set()
            await asyncio.to_thread(self._poller.join)
