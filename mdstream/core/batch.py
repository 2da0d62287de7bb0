"""A raw batch as columns: the unit every pipeline stage works on, vectorised with numpy."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TRADE = "TRADE"
QUOTE = "QUOTE"
_NAN = float("nan")


def _floats(ticks: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    return np.fromiter(
        (_NAN if (v := t.get(name)) is None else v for t in ticks),
        dtype=np.float64,
        count=len(ticks),
    )


@dataclass(frozen=True)
class TickColumns:
    """The ticks of one RawMarketDataBatch, one numpy array per field, in arrival order."""

    batch_id: str
    source: str
    symbol: str
    published_ns: int
    is_trade: np.ndarray
    ts: np.ndarray
    provider_ts: np.ndarray
    price: np.ndarray
    volume: np.ndarray
    bid: np.ndarray
    ask: np.ndarray

    @classmethod
    def from_record(cls, batch: Mapping[str, Any]) -> TickColumns:
        ticks = batch["ticks"]
        n = len(ticks)
        return cls(
            batch_id=batch["batchId"],
            source=batch["source"],
            symbol=batch["instrument"]["symbol"],
            published_ns=int(batch["timestamp"]),
            is_trade=np.fromiter((t["kind"] == TRADE for t in ticks), dtype=bool, count=n),
            ts=np.fromiter((t["timestamp"] for t in ticks), dtype=np.int64, count=n),
            provider_ts=np.fromiter(
                (t["provider_timestamp"] for t in ticks), dtype=np.int64, count=n
            ),
            price=_floats(ticks, "price"),
            volume=_floats(ticks, "volume"),
            bid=_floats(ticks, "bid"),
            ask=_floats(ticks, "ask"),
        )

    def __len__(self) -> int:
        return len(self.ts)


_NS = uuid.UUID("6f2b7c1e-3f0e-4c55-9f57-2b8e8d7f3a10")


def stable_id(*parts: object) -> str:
    """A UUID that is a function of its parts: the same fact always gets the same event id."""
    return str(uuid.uuid5(_NS, "|".join(map(str, parts))))


def tick_event_id(batch_id: str, index: int) -> str:
    """The RawMarketDataEvent id of tick `index` of a batch: stable, so lineage can name it."""
    return str(uuid.uuid5(uuid.UUID(batch_id), str(index)))


def expand_batch(
    batch: Mapping[str, Any],
    ingested_ns: int | None = None,
    quality: Mapping[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """The batch as the spec's RawMarketDataEvent records, one per tick.

    `quality`: the pipeline's verdict on the batch (`StepOutput.tick_quality[batchId]`), which
    fills each event's quality score and the quality flags its tick raised.
    """
    from mdstream.core.quality.checks import names  # the core's flag names; no cycle at import

    published = int(batch["timestamp"]) if ingested_ns is None else ingested_ns
    scores = quality["scores"] if quality else [None] * len(batch["ticks"])
    flags = quality["flags"] if quality else [0] * len(batch["ticks"])
    events = []
    for i, tick in enumerate(batch["ticks"]):
        events.append(
            {
                "eventId": tick_event_id(batch["batchId"], i),
                "timestamp": published,
                "source": batch["source"],
                "instrument": dict(batch["instrument"]),
                "data": {
                    "price": tick.get("price"),
                    "volume": tick.get("volume"),
                    "bid": tick.get("bid"),
                    "ask": tick.get("ask"),
                    "timestamp": tick["timestamp"],
                },
                "metadata": {
                    "provider_timestamp": tick["provider_timestamp"],
                    "ingestion_latency_ms": (published - tick["timestamp"]) / 1e6,
                    "quality_score": scores[i],
                    "quality_flags": names(flags[i]),
                },
            }
        )
    return events
