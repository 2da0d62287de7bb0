"""The interfaces the ingestion components are written against (agreed for issue #4).

Adapters take a `Limiter` and a `Breaker`; when a deployment has none, `NoLimit` and
`AlwaysClosed` stand in, so adapter code never branches on their absence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from mdstream.providers.base import FrameError, ParseResult, ProviderTick


@dataclass
class ConnectionHealth:
    connected: bool
    last_message_ns: int | None
    messages: int
    errors: int
    reconnects: int


@runtime_checkable
class Limiter(Protocol):
    """Token bucket per provider and endpoint, shared by all tasks of an adapter."""

    async def acquire(self, endpoint: str) -> None: ...

    def retry_after(self, endpoint: str, seconds: float) -> None:
        """Honour a provider's Retry-After: no call to `endpoint` for `seconds`."""
        ...


@runtime_checkable
class Breaker(Protocol):
    """Circuit breaker of one provider."""

    async def allow(self) -> bool:
        """False while open (or while half-open with its trial calls used up)."""
        ...

    async def record_success(self) -> None: ...

    async def record_failure(self, reason: str) -> None: ...


@runtime_checkable
class TickSink(Protocol):
    """Where parsed ticks go (the raw batcher to Kafka) and where bad frames go."""

    async def submit(self, tick: ProviderTick) -> None: ...

    async def dead_letter(self, error: FrameError) -> None: ...


@runtime_checkable
class StreamAdapter(Protocol):
    provider: str

    async def run(self) -> None:
        """Connect; reconnect with backoff until `stop()`."""
        ...

    async def subscribe(self, symbols: Iterable[str]) -> None: ...

    async def unsubscribe(self, symbols: Iterable[str]) -> None: ...

    def health(self) -> ConnectionHealth: ...

    async def stop(self) -> None: ...


@runtime_checkable
class HistoricalSource(Protocol):
    """A REST or file source that `mdstream backfill` reads in chunks of at most `max_span`."""

    provider: str
    max_span: timedelta

    async def fetch(
        self, symbol: str, start: datetime, end: datetime, freq: str
    ) -> ParseResult: ...


class NoLimit:
    """A limiter that never waits: for sources without limits (local files)."""

    async def acquire(self, endpoint: str) -> None:
        return None

    def retry_after(self, endpoint: str, seconds: float) -> None:
        return None


class AlwaysClosed:
    """A breaker that always lets calls through: for deployments without breaker state."""

    async def allow(self) -> bool:
        return True

    async def record_success(self) -> None:
        return None

    async def record_failure(self, reason: str) -> None:
        return None
