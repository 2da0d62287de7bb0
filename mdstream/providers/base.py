"""What every provider parser returns (the contract agreed between the ingestion modules).

A parser turns one provider frame into ticks, bars, control messages (handshake, subscription
acknowledgements, pings) and errors. It never raises: a frame it cannot use becomes a FrameError
with the reason, so the connection keeps going and the bytes end up in the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProviderTick:
    """One raw tick (a dict matching the Avro `RawTick` record) with its provider and symbol."""

    provider: str
    symbol: str
    tick: dict[str, Any]


@dataclass(frozen=True)
class ProviderBar:
    """An OHLCV bar as the provider computed it, stamped at its interval start (epoch ns UTC)."""

    provider: str
    symbol: str
    interval: str
    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int | None
    vwap: float | None


@dataclass(frozen=True)
class FrameError:
    """A frame (or one element of it) that could not be parsed; `payload` has secrets removed."""

    provider: str
    reason: str
    payload: bytes


@dataclass
class ParseResult:
    ticks: list[ProviderTick] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    bars: list[ProviderBar] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)
