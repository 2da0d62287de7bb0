"""What every provider emulator shares: a loopback aiohttp server, a seeded tick script that
records exactly what went on the wire, heartbeats, and scripted faults.

Test tools, not product code: nothing under `mdstream/` imports this package, and it is not
shipped (see setuptools `include` in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

GARBAGE_FRAMES = (
    "{not json",
    '{"type":"trade","data":[{"s":"AAPL","p":',
    "\x00\x01binary-ish garbage",
    "[1,2,3]",
    '"just a string"',
)


@dataclass(frozen=True)
class SentTick:
    """A tick as the emulator put it on the wire (times at the provider's wire resolution)."""

    symbol: str
    kind: str  # TRADE or QUOTE
    ts_ns: int
    price: float | None = None
    size: float | None = None
    bid: float | None = None
    ask: float | None = None


@dataclass
class Faults:
    """Scripted failures; each `*_after_frames` fault fires once, on the connection that
    reaches that many data frames."""

    disconnect_after_frames: int | None = None  # close the connection mid-stream
    stall_after_frames: int | None = None  # go silent: no data, no heartbeats, connection open
    garbage_every: int | None = None  # a garbage frame after every n-th data frame
    sentinel_every: int | None = None  # every n-th trade has price -1 (a "no data" sentinel)


class TickScript:
    """Seeded trades (and quotes) for the subscribed symbols, within a total budget."""

    def __init__(self, seed: int, budget: int | None, quote_share: float) -> None:
        self._rng = random.Random(seed)
        self._prices: dict[str, float] = {}
        self.budget = budget
        self.quote_share = quote_share
        self.issued = 0

    def exhausted(self) -> bool:
        return self.budget is not None and self.issued >= self.budget

    def next(self, symbol: str, ts_ns: int) -> SentTick:
        self.issued += 1
        mid = self._prices.get(symbol) or round(self._rng.uniform(50, 500), 2)
        # 1 bp per tick: already many times a liquid stock's per-trade volatility.
        mid = max(1.0, round(mid * (1 + self._rng.gauss(0, 0.0001)), 2))
        self._prices[symbol] = mid
        if self._rng.random() < self.quote_share:
            half = self._rng.choice((0.01, 0.02, 0.03))
            return SentTick(
                symbol, "QUOTE", ts_ns, bid=round(mid - half, 2), ask=round(mid + half, 2)
            )
        return SentTick(symbol, "TRADE", ts_ns, price=mid, size=float(self._rng.randint(1, 500)))


@dataclass
class Connection:
    ws: web.WebSocketResponse
    symbols: set[str] = field(default_factory=set)
    frames: int = 0
    stalled: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, text: str) -> None:
        async with self.lock:
            await self.ws.send_str(text)


class Emulator:
    """A provider's servers on 127.0.0.1 (an ephemeral port unless given one)."""

    provider = ""
    ts_unit_ns = 1  # wire resolution of timestamps

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        seed: int = 1,
        budget: int | None = None,
        frame_interval_s: float = 0.005,
        ticks_per_frame: int = 4,
        heartbeat_s: float = 0.5,
        quote_share: float = 0.3,
        faults: Faults | None = None,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.script = TickScript(seed, budget, quote_share)
        self.frame_interval_s = frame_interval_s
        self.ticks_per_frame = ticks_per_frame
        self.heartbeat_s = heartbeat_s
        self.faults = faults or Faults()
        self.port = port
        self.sent: list[SentTick] = []  # valid ticks, in wire order
        self.sentinels_sent = 0
        self.garbage_sent: list[str] = []
        self.connections = 0  # accepted websocket connections, ever
        self.active: list[Connection] = []
        self.subscribe_requests: list[list[str]] = []
        self.rest_requests: list[tuple[float, str, int]] = []  # (monotonic time, path, status)
        self._fired: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self._trades_seen = 0

    # --- server lifecycle ---------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.active):
            await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def inject(self, text: str) -> None:
        """Send one scripted frame to every open connection."""
        for conn in list(self.active):
            await conn.send(text)

    # --- streaming ----------------------------------------------------------------------------

    def encode(self, ticks: list[SentTick], sentinel: bool) -> str:
        """One data frame in the provider's format (with a -1 trade appended if `sentinel`)."""
        raise NotImplementedError

    async def heartbeat(self, conn: Connection) -> None:
        await conn.ws.ping()

    def _fire(self, name: str, after: int | None, frames: int) -> bool:
        if after is None or name in self._fired or frames < after:
            return False
        self._fired.add(name)
        return True

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def serve(
        self,
        conn: Connection,
        on_message: Callable[[Connection, str], Awaitable[bool]],
    ) -> None:
        """Run one connection: read client messages, stream data, send heartbeats, apply faults.
        `on_message` returns False to end the connection."""
        self.active.append(conn)
        sender = self._spawn(self._stream(conn))
        beats = self._spawn(self._heartbeats(conn))
        try:
            async for msg in conn.ws:
                if msg.type == WSMsgType.PING:
                    if not conn.stalled:  # a stalled server answers nothing, pings included
                        async with conn.lock:
                            await conn.ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    continue
                elif msg.type != WSMsgType.TEXT or not await on_message(conn, msg.data):
                    break
        finally:
            sender.cancel()
            beats.cancel()
            self.active.remove(conn)
            await conn.ws.close()

    async def _heartbeats(self, conn: Connection) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.ws.closed:
                await asyncio.sleep(self.heartbeat_s)
                if not conn.stalled:
                    async with conn.lock:
                        await self.heartbeat(conn)

    async def _stream(self, conn: Connection) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not conn.ws.closed:
                await asyncio.sleep(self.frame_interval_s)
                if conn.stalled or not conn.symbols or self.script.exhausted():
                    await asyncio.sleep(0.05)  # idle: no need to look 200 times a second
                    continue
                now = time.time_ns() // self.ts_unit_ns * self.ts_unit_ns
                symbols = sorted(conn.symbols)
                ticks = []
                for i in range(self.ticks_per_frame):
                    if self.script.exhausted():
                        break
                    ticks.append(self.script.next(symbols[(conn.frames + i) % len(symbols)], now))
                every = self.faults.sentinel_every
                sentinel = False
                for t in ticks:
                    if t.kind == "TRADE":
                        self._trades_seen += 1
                        sentinel = sentinel or bool(every and self._trades_seen % every == 0)
                await conn.send(self.encode(ticks, sentinel))
                self.sent += ticks
                self.sentinels_sent += sentinel
                conn.frames += 1
                f = self.faults
                if f.garbage_every and conn.frames % f.garbage_every == 0:
                    garbage = GARBAGE_FRAMES[len(self.garbage_sent) % len(GARBAGE_FRAMES)]
                    await conn.send(garbage)
                    self.garbage_sent.append(garbage)
                if self._fire("disconnect", f.disconnect_after_frames, conn.frames):
                    await conn.ws.close()
                    return
                if self._fire("stall", f.stall_after_frames, conn.frames):
                    conn.stalled = True
