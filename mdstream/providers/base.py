"""What every provider parser returns (agreed interface of the two ingestion sides, issue #4).

A parser turns one provider frame (or file chunk, or SDK object) into ticks, bars, control
messages and errors, and never raises: bad input becomes a `FrameError` that the I/O edge
dead-letters, so one garbage frame never takes a connection down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProviderTick:
    """A raw tick (`RawTick` of schemas/RawMarketDataBatch.avsc) with its symbol and source."""

    provider: str
    symbol: str
    tick: dict[str, Any]


@dataclass(frozen=True)
class ProviderBar:
    """A provider's own OHLCV bar, stamped at its interval start (epoch ns UTC)."""

    provider: str
    symbol: str
    interval: str
    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int | None = None
    vwap: float | None = None


@dataclass(frozen=True)
class FrameError:
    """A frame that could not be parsed; `payload` has secrets removed."""

    provider: str
    reason: str
    payload: bytes


@dataclass
class ParseResult:
    ticks: list[ProviderTick] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    bars: list[ProviderBar] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: ParseResult) -> None:
        self.ticks += other.ticks
        self.errors += other.errors
        self.bars += other.bars
        self.control += other.control
