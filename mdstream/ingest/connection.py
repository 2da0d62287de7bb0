"""A provider websocket feed that stays up: health, heartbeat timeout, reconnect with jittered
exponential backoff, re-subscription, and a circuit breaker consulted before every connection.

What differs between providers (URL, handshake, subscribe messages, parser, which errors are
fatal) is a `FeedProtocol`; `WebSocketFeed` is the one connection manager they all share. A frame
the parser cannot use is dead-lettered and the connection stays up; a fatal error (bad key,
connection limit) stops the feed with a clear message instead of retrying into a storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from mdstream.ingest.credentials import redact, redact_text
from mdstream.ingest.protocols import AlwaysClosed, Breaker, ConnectionHealth, TickSink
from mdstream.ops import metrics
from mdstream.providers.base import FrameError, ParseResult, ProviderBar

log = logging.getLogger(__name__)

#: How often a waiting receive looks for a stop, and how long a stop drains at most.
_POLL_S = 0.2
_DRAIN_S = 2.0
RATE_WINDOW_S = 10


class FeedError(Exception):
    """The connection failed in a way a reconnect can fix."""


class FatalFeedError(FeedError):
    """Reconnecting cannot help (rejected credentials, plan limits): the feed stops."""


class Handshake(Protocol):
    async def send(self, message: dict[str, Any]) -> None: ...

    async def control(self) -> list[dict[str, Any]]:
        """The control records of the next frame (data arriving meanwhile is processed)."""
        ...


class FeedProtocol(Protocol):
    """What one provider's websocket feed looks like."""

    provider: str
    heartbeat_timeout_s: float  # no frame (data, ping, heartbeat) for this long → reconnect

    def url(self) -> str: ...

    def secrets(self) -> tuple[str, ...]:
        """Values to remove from logs and dead letters."""
        ...

    def parse(self, frame: bytes | str) -> ParseResult: ...

    async def handshake(self, conn: Handshake) -> None:
        """Authenticate after connecting; raise FeedError/FatalFeedError when refused."""
        ...

    def subscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]: ...

    def unsubscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]: ...

    def check_control(self, control: dict[str, Any]) -> None:
        """React to a control record while streaming: raise to reconnect or stop."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: a uniform delay in [0, min(cap, base·2^attempt)].
    The attempt count starts afresh after a connection that stayed up `reset_after_s`."""

    base_s: float = 0.5
    cap_s: float = 30.0
    reset_after_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * 2 ** min(attempt, 30)))


class WebSocketFeed:
    """A StreamAdapter for any FeedProtocol, publishing to a TickSink."""

    def __init__(
        self,
        protocol: FeedProtocol,
        sink: TickSink,
        *,
        breaker: Breaker | None = None,
        backoff: Backoff | None = None,
        session: aiohttp.ClientSession | None = None,
        seed: int | None = None,
        on_bar: Callable[[ProviderBar], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.provider = protocol.provider
        self.sink = sink
        self.breaker = breaker or AlwaysClosed()
        self.backoff = backoff or Backoff()
        self.fatal: FatalFeedError | None = None
        # Provider-computed bars have no place on the raw tick topic; a caller may want them.
        self.on_bar = on_bar
        self._session = session
        self._rng = random.Random(seed)
        self._symbols: set[str] = set()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._streaming = False  # in the data loop (a stop then drains what arrived)
        self._drain_until = 0.0  # set by stop(): the drain ends then, however busy the feed
        self._drained = asyncio.Event()  # set when a streaming connection has been left
        self._stopping = asyncio.Event()
        self._health = ConnectionHealth(False, None, 0, 0, 0)
        self._per_second: deque[list[int]] = deque(maxlen=RATE_WINDOW_S + 1)  # [second, frames]
        self._connected_event = asyncio.Event()
        self._connected_at = 0.0

    # --- StreamAdapter ------------------------------------------------------------------------

    def health(self) -> ConnectionHealth:
        h = self._health
        return ConnectionHealth(h.connected, h.last_message_ns, h.messages, h.errors, h.reconnects)

    def message_rate(self) -> float:
        """Frames per second over the last RATE_WINDOW_S whole seconds."""
        now = int(time.monotonic())
        recent = sum(n for second, n in self._per_second if now - RATE_WINDOW_S <= second < now)
        return recent / RATE_WINDOW_S

    async def subscribe(self, symbols: Iterable[str]) -> None:
        new = sorted(set(symbols) - self._symbols)
        self._symbols.update(new)
        if new and self._ws is not None and self._health.connected:
            await self._send_all(self.protocol.subscribe_messages(new))

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        gone = sorted(set(symbols) & self._symbols)
        self._symbols.difference_update(gone)
        if gone and self._ws is not None and self._health.connected:
            await self._send_all(self.protocol.unsubscribe_messages(gone))

    async def stop(self) -> None:
        """Stop gracefully: a streaming connection first handles every frame that already
        arrived (until the feed is quiet for a moment, at most `_DRAIN_S`), then closes; frames
        dropped at close were the last ticks of a feed, lost (issue #16). Returns once the
        drain is over, so a caller may cancel `run()` afterwards without losing a frame."""
        self._drain_until = time.monotonic() + _DRAIN_S
        self._stopping.set()
        if self._ws is not None and not self._streaming:
            await self._ws.close()  # still in the handshake: nothing received to keep
        elif self._streaming:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), _DRAIN_S + 1.0)

    async def wait_connected(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._connected_event.wait(), timeout_s)

    async def run(self) -> None:
        """Connect and stream until stop(); raises FatalFeedError when it cannot go on."""
        own_session = self._session is None
        session = self._session or aiohttp.ClientSession()
        attempt = 0
        try:
            while not self._stopping.is_set():
                if not await self.breaker.allow():
                    reason = "circuit open"
                else:
                    try:
                        await self._connect_and_stream(session)
                        break  # returns only when stopping
                    except FatalFeedError as exc:
                        self.fatal = exc
                        await self.breaker.record_failure(str(exc))
                        log.error("%s feed stopped: %s", self.provider, exc)
                        raise
                    except (FeedError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                        reason = self._redacted(f"{type(exc).__name__}: {exc}")
                        await self.breaker.record_failure(reason)
                    up_s = time.monotonic() - self._connected_at
                    if self._health.connected and up_s >= self.backoff.reset_after_s:
                        attempt = 0  # that session was good: a fresh failure, not a streak
                    self._set_connected(False)
                if self._stopping.is_set():
                    break
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                self._health.reconnects += 1
                metrics.RECONNECTS.labels(self.provider, reason.split(":")[0][:40]).inc()
                log.warning(
                    "%s feed: %s; reconnecting in %.2f s (attempt %d)",
                    self.provider,
                    reason,
                    delay,
                    attempt,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self._set_connected(False)
            if own_session:
                await session.close()

    # --- one connection -----------------------------------------------------------------------

    async def _connect_and_stream(self, session: aiohttp.ClientSession) -> None:
        try:
            ws = await session.ws_connect(
                self.protocol.url(), autoping=False, timeout=aiohttp.ClientWSTimeout(ws_close=2)
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise FatalFeedError(
                    f"{self.provider} refused the credentials (HTTP {exc.status} at the websocket "
                    "handshake): check the API key"
                ) from None
            raise FeedError(f"handshake failed with HTTP {exc.status}") from None
        self._ws = ws
        try:
            await asyncio.wait_for(
                self.protocol.handshake(_Conn(self, ws)), self.protocol.heartbeat_timeout_s
            )
            if self._symbols:
                await self._send_all(self.protocol.subscribe_messages(sorted(self._symbols)))
            self._set_connected(True)
            await self.breaker.record_success()
            log.info("%s feed connected, %d symbols", self.provider, len(self._symbols))
            self._streaming = True
            self._drained.clear()
            while True:
                frame = await self._receive(ws)
                if frame is None:
                    return
                await self._handle(frame, streaming=True)
        finally:
            self._streaming = False
            self._ws = None
            await ws.close()
            self._drained.set()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> str | bytes | None:
        """The next data frame; None on a close by stop(); FeedError on a stall.

        Liveness is any frame: data, a provider heartbeat, a ping, or the pong to a ping we send
        after half the heartbeat timeout of silence. A quiet but healthy feed answers the ping;
        a stalled one answers nothing and is reconnected.
        """
        timeout = self.protocol.heartbeat_timeout_s
        last = time.monotonic()
        pinged = False
        while True:
            now = time.monotonic()
            if self._stopping.is_set():
                if now >= self._drain_until:
                    return None
            elif now - last >= timeout:
                raise FeedError(f"no frame, heartbeat or pong for {timeout} s")
            elif not pinged and now - last >= timeout / 2:
                await ws.ping()
                pinged = True
            try:
                msg = await ws.receive(timeout=_POLL_S)
            except TimeoutError:
                if self._stopping.is_set():
                    return None  # quiet: every frame that arrived was handled
                continue
            self._touch()
            last, pinged = time.monotonic(), False
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return msg.data
            if msg.type == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                continue
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                if self._stopping.is_set():
                    return None
                raise FeedError(f"server closed the connection (code {ws.close_code})")
            elif msg.type == aiohttp.WSMsgType.CLOSED:
                if self._stopping.is_set():
                    return None
                raise FeedError("connection closed")
            else:  # ERROR
                raise FeedError(f"websocket error: {ws.exception()!r}")

    async def _handle(self, frame: str | bytes, *, streaming: bool) -> list[dict[str, Any]]:
        self._health.messages += 1
        metrics.FRAMES.labels(self.provider).inc()
        result = self.protocol.parse(frame)
        for tick in result.ticks:
            await self.sink.submit(tick)
        metrics.TICKS.labels(self.provider).inc(len(result.ticks))
        for error in result.errors:
            self._health.errors += 1
            metrics.FRAME_ERRORS.labels(self.provider).inc()
            await self.sink.dead_letter(self._redacted_error(error))
        metrics.PROVIDER_BARS.labels(self.provider).inc(len(result.bars))
        if self.on_bar is not None:
            for bar in result.bars:
                self.on_bar(bar)
        controls = []
        for control in result.control:
            if "unapplied" in control:  # parsed, but the raw contract cannot carry it
                await self.sink.dead_letter(
                    self._redacted_error(
                        FrameError(self.provider, control["unapplied"], control["raw"])
                    )
                )
            else:
                controls.append(control)
                if streaming:
                    self.protocol.check_control(control)
        return controls

    async def _send_all(self, messages: list[dict[str, Any]]) -> None:
        ws = self._ws
        if ws is None:
            return
        for message in messages:
            await ws.send_str(json.dumps(message, separators=(",", ":")))

    # --- bookkeeping --------------------------------------------------------------------------

    def _touch(self) -> None:
        second = int(time.monotonic())
        if self._per_second and self._per_second[-1][0] == second:
            self._per_second[-1][1] += 1
        else:
            self._per_second.append([second, 1])
        now = time.time_ns()
        self._health.last_message_ns = now
        metrics.LAST_MESSAGE.labels(self.provider).set(now / 1e9)

    def _set_connected(self, connected: bool) -> None:
        self._health.connected = connected
        metrics.CONNECTED.labels(self.provider).set(1 if connected else 0)
        if connected:
            self._connected_at = time.monotonic()
            self._connected_event.set()
        else:
            self._connected_event.clear()

    def _redacted(self, text: str) -> str:
        return redact_text(text, self.protocol.secrets())

    def _redacted_error(self, error: FrameError) -> FrameError:
        secrets = self.protocol.secrets()
        return FrameError(
            error.provider, redact_text(error.reason, secrets), redact(error.payload, secrets)
        )


class _Conn:
    """The Handshake a FeedProtocol talks to while authenticating."""

    def __init__(self, feed: WebSocketFeed, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._feed = feed
        self._ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self._ws.send_str(json.dumps(message, separators=(",", ":")))

    async def control(self) -> list[dict[str, Any]]:
        while True:
            frame = await self._feed._receive(self._ws)
            if frame is None:
                raise FeedError("closed during the handshake")
            controls = await self._feed._handle(frame, streaming=False)
            if controls:
                return controls
