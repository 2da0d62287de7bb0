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


_I8 = np.dtype("<i8")
_F8 = np.dtype("<f8")
#: The wire's "this tick has no sequence number" (sequence numbers are never negative).
NO_SEQUENCE = np.iinfo(np.int64).min
#: Wire codes of `kind` (one byte per tick).
KIND_CODES = {TRADE: 0, QUOTE: 1}


class ColumnError(ValueError):
    """The columns of a wire batch do not fit together; the reason says which and how."""


def _floats(ticks: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    return np.fromiter(
        (_NAN if (v := t.get(name)) is None else v for t in ticks),
        dtype=np.float64,
        count=len(ticks),
    )


def _optional(value: float) -> float | None:
    return None if value != value else value  # NaN is the columns' "absent"


@dataclass(frozen=True)
class TickColumns:
    """The ticks of one RawMarketDataBatch, one numpy array per field, in arrival order.

    Absent prices and sizes are NaN, absent sequence numbers NaN (a float column, as the
    sequence checks compare them with NaN gaps); `conditions` is None when no tick has any.
    """

    batch_id: str
    source: str
    instrument: Mapping[str, Any]
    published_ns: int
    is_trade: np.ndarray
    ts: np.ndarray
    provider_ts: np.ndarray
    price: np.ndarray
    volume: np.ndarray
    bid: np.ndarray
    ask: np.ndarray
    sequence: np.ndarray
    conditions: tuple[str | None, ...] | None = None

    @property
    def symbol(self) -> str:
        return self.instrument["symbol"]

    @classmethod
    def from_record(cls, batch: Mapping[str, Any]) -> TickColumns:
        """From the row form (a batch with a list of tick records), as producers build it."""
        if "columns" in batch:
            return cls.from_wire(batch)
        ticks = batch["ticks"]
        n = len(ticks)
        conditions = tuple(t.get("conditions") for t in ticks)
        return cls(
            batch_id=batch["batchId"],
            source=batch["source"],
            instrument=batch["instrument"],
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
            sequence=_floats(ticks, "sequence"),
            conditions=conditions if any(conditions) else None,
        )

    @classmethod
    def from_wire(cls, batch: Mapping[str, Any]) -> TickColumns:
        """From the wire form (packed little-endian columns): no Python object per tick.

        Raises ColumnError when the columns cannot belong to one batch of `count` ticks.
        """
        c = batch["columns"]
        n = c["count"]
        if n < 0:
            raise ColumnError(f"negative tick count {n}")

        def column(name: str, dtype: np.dtype, data: bytes | None = None) -> np.ndarray:
            raw = c[name] if data is None else data
            if len(raw) != n * dtype.itemsize:
                raise ColumnError(
                    f"column {name} holds {len(raw)} bytes, {n} ticks need {n * dtype.itemsize}"
                )
            return np.frombuffer(raw, dtype=dtype)

        kind = column("kind", np.dtype(np.uint8))
        if n and int(kind.max()) > 1:
            raise ColumnError(f"column kind holds code {int(kind.max())} (0 TRADE, 1 QUOTE)")
        if c["sequence"] is None:
            sequence = np.full(n, _NAN)
        else:
            raw_seq = column("sequence", _I8)
            sequence = np.where(raw_seq == NO_SEQUENCE, _NAN, raw_seq.astype(np.float64))
        conditions = c["conditions"]
        if conditions is not None and len(conditions) != n:
            raise ColumnError(f"column conditions holds {len(conditions)} values, count is {n}")
        return cls(
            batch_id=batch["batchId"],
            source=batch["source"],
            instrument=batch["instrument"],
            published_ns=int(batch["timestamp"]),
            is_trade=kind == 0,
            ts=column("event_ts", _I8).astype(np.int64),
            provider_ts=column("provider_ts", _I8).astype(np.int64),
            price=column("price", _F8).astype(np.float64),
            volume=column("volume", _F8).astype(np.float64),
            bid=column("bid", _F8).astype(np.float64),
            ask=column("ask", _F8).astype(np.float64),
            sequence=sequence,
            conditions=tuple(conditions) if conditions is not None and any(conditions) else None,
        )

    def __len__(self) -> int:
        return len(self.ts)

    def tick(self, i: int) -> dict[str, Any]:
        """Tick `i` as a RawTick record (for dead letters: the exact tick that was refused)."""
        seq = self.sequence[i]
        return {
            "kind": TRADE if self.is_trade[i] else QUOTE,
            "timestamp": int(self.ts[i]),
            "provider_timestamp": int(self.provider_ts[i]),
            "price": _optional(float(self.price[i])),
            "volume": _optional(float(self.volume[i])),
            "bid": _optional(float(self.bid[i])),
            "ask": _optional(float(self.ask[i])),
            "sequence": None if seq != seq else int(seq),
            "conditions": self.conditions[i] if self.conditions is not None else None,
        }

    def to_record(self) -> dict[str, Any]:
        """The batch in row form (the shape producers build and tests compare)."""
        return {
            "batchId": self.batch_id,
            "timestamp": self.published_ns,
            "source": self.source,
            "instrument": dict(self.instrument),
            "ticks": [self.tick(i) for i in range(len(self))],
        }


def pack_columns(ticks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Row-form ticks → the wire's `columns` record (little-endian packed arrays).

    Absent prices and sizes travel as NaN, so a NaN a provider sent reads back as absent: both
    are refused by validation for the same reason."""
    n = len(ticks)
    seqs = [t.get("sequence") for t in ticks]
    conditions = [t.get("conditions") for t in ticks]
    return {
        "count": n,
        "kind": bytes(KIND_CODES[t["kind"]] for t in ticks),
        "event_ts": np.fromiter((t["timestamp"] for t in ticks), _I8, n).tobytes(),
        "provider_ts": np.fromiter((t["provider_timestamp"] for t in ticks), _I8, n).tobytes(),
        "price": _floats(ticks, "price").astype(_F8).tobytes(),
        "volume": _floats(ticks, "volume").astype(_F8).tobytes(),
        "bid": _floats(ticks, "bid").astype(_F8).tobytes(),
        "ask": _floats(ticks, "ask").astype(_F8).tobytes(),
        "sequence": np.fromiter((NO_SEQUENCE if s is None else s for s in seqs), _I8, n).tobytes()
        if any(s is not None for s in seqs)
        else None,
        "conditions": conditions if any(c is not None for c in conditions) else None,
    }


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
