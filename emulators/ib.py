"""An Interactive Brokers TWS / IB Gateway on loopback, speaking the TWS API socket protocol.

Enough of the protocol for mdstream's adapter (`mdstream.ingest.ib`), as IB documents it:

- **Framing**: every message is a 4-byte big-endian length and fields separated (and ended) by NUL.
- **Handshake**: the client sends ``API\\0`` and a framed ``v<min>..<max>`` version range; the
  server answers with two fields, its version and its connection time, then the client's
  ``startApi`` (71) gets ``nextValidId`` (9) and ``managedAccounts`` (15). A second connection with
  a client id already connected gets error 326 and is closed, as TWS does.
- **Start-up requests** a client sends after connecting (positions 61, open orders 5, completed
  orders 99, account updates 6 and 76, executions 7, current time 49) get their end markers.
- **Contract details** (``reqContractDetails`` 9): a stock's details with its ``conId`` (ib_async
  needs a qualified contract to subscribe), or error 200 for an unknown symbol.
- **Market data** (``reqMktData`` 1, ``cancelMktData`` 2): per subscription, scripted snapshots
  as ``tickPrice`` (1: bid 1, ask 2, last 4, with their sizes) and ``tickSize`` (2: 0, 3, 5) and the
  last trade's time as ``tickString`` (46, tick type 45, epoch seconds). An unknown symbol gets
  error 200 ("No security definition"), and nothing else.
- **Historical bars** (``reqHistoricalData`` 20): minute or daily bars ending at the requested
  end, intraday ones stamped in epoch seconds (``formatDate=2``), daily ones as dates; an
  identical request within 15 s is refused with error 162 (the pacing violation), as IB does.

Faults for tests: `drop_connections()` closes every client socket (as a TWS restart does).
Test tools, not product code (see `emulators/__init__.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

SERVER_VERSION = 176
#: tick types (IB's TickType enum)
BID, ASK, LAST = 1, 2, 4
BID_SIZE, ASK_SIZE, LAST_SIZE = 0, 3, 5
LAST_TIMESTAMP = 45
PACING_WINDOW_S = 15.0


def frame(*fields: object) -> bytes:
    """One framed message: fields as text, each ended by NUL, behind a 4-byte length."""
    body = b"".join(str(f).encode() + b"\0" for f in fields)
    return struct.pack(">I", len(body)) + body


@dataclass(frozen=True)
class Snapshot:
    """What one market-data update carried to the client."""

    symbol: str
    bid: float
    ask: float
    last: float
    last_size: float
    last_time_s: int


@dataclass
class Subscription:
    req_id: int
    symbol: str
    task: asyncio.Task[None] | None = None


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    client_id: int | None = None
    subscriptions: dict[int, Subscription] = field(default_factory=dict)


class TwsEmulator:
    """`async with TwsEmulator(symbols=("AAPL",)) as tws:` then connect ib_async to `tws.port`."""

    def __init__(
        self,
        symbols: tuple[str, ...] = ("AAPL", "MSFT"),
        *,
        seed: int = 7,
        interval_s: float = 0.05,
        trade_every: int = 2,
        accounts: tuple[str, ...] = ("DU1234567",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` times IB's 15 s pacing rule (tests share a fake one with the limiter)."""
        self._clock = clock
        self.symbols = set(symbols)
        self.interval_s = interval_s
        self.trade_every = trade_every
        self.accounts = accounts
        self._rng = random.Random(seed)
        self._prices = {s: 100.0 + 10 * i for i, s in enumerate(sorted(symbols))}
        self._clients: list[_Client] = []
        self._server: asyncio.Server | None = None
        self.port = 0
        #: every snapshot sent, in order, and every request received (message id, fields)
        self.sent: list[Snapshot] = []
        self.requests: list[tuple[int, list[str]]] = []
        self.connections = 0
        self._historical_seen: dict[tuple[str, ...], float] = {}

    async def __aenter__(self) -> TwsEmulator:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def drop_connections(self) -> None:
        for client in list(self._clients):
            await self._close(client)

    # --- protocol -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self._clients.append(client)
        self.connections += 1
        try:
            if await reader.readexactly(4) != b"API\0":
                return
            (size,) = struct.unpack(">I", await reader.readexactly(4))
            versions = (await reader.readexactly(size)).decode()  # "v157..178[ options]", no NUL
            low, high = (int(v) for v in versions.split()[0].lstrip("v").split(".."))
            if not low <= SERVER_VERSION <= high:
                return
            now = datetime.now(UTC).strftime("%Y%m%d %H:%M:%S UTC")
            writer.write(frame(SERVER_VERSION, now))
            while True:
                fields = await self._read(reader)
                self.requests.append((int(fields[0]), fields))
                await self._handle(client, int(fields[0]), fields)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await self._close(client)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> list[str]:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        return (await reader.readexactly(size)).decode().split("\0")[:-1]

    def _send(self, client: _Client, *fields: object) -> None:
        if not client.writer.is_closing():
            client.writer.write(frame(*fields))

    async def _handle(self, client: _Client, msg_id: int, f: list[str]) -> None:
        if msg_id == 71:  # startApi: version, clientId, optional capabilities
            client_id = int(f[2])
            if any(c.client_id == client_id for c in self._clients if c is not client):
                self._send(client, 4, 2, -1, 326, f"client id {client_id} is already in use", "")
                await client.writer.drain()
                await self._close(client)
                return
            client.client_id = client_id
            self._send(client, 9, 1, 1)  # nextValidId
            self._send(client, 15, 1, ",".join(self.accounts))  # managedAccounts
        elif msg_id == 61:  # reqPositions
            self._send(client, 62, 1)
        elif msg_id == 5:  # reqOpenOrders
            self._send(client, 53, 1)
        elif msg_id == 99:  # reqCompletedOrders
            self._send(client, 102)
        elif msg_id == 6:  # reqAccountUpdates: version, subscribe, account
            self._send(client, 54, 1, f[3] or self.accounts[0])
        elif msg_id == 7:  # reqExecutions: version, reqId, filter...
            self._send(client, 55, 1, f[2])
        elif msg_id == 49:  # reqCurrentTime
            self._send(client, 49, 1, int(time.time()))
        elif msg_id == 76:  # reqAccountUpdatesMulti: version, reqId, account, model, ledger
            self._send(client, 74, 1, f[2])
        elif msg_id == 9:  # reqContractDetails: version, reqId, contract (conId, symbol, ...)
            self._contract_details(client, int(f[2]), f[4], f[5], f[10], f[12])
        elif msg_id == 1:  # reqMktData: version, reqId, contract (conId, symbol, secType, ...)
            self._subscribe(client, int(f[2]), f[4])
        elif msg_id == 2:  # cancelMktData: version, reqId
            sub = client.subscriptions.pop(int(f[2]), None)
            if sub is not None and sub.task is not None:
                sub.task.cancel()
        elif msg_id == 20:  # reqHistoricalData
            self._historical(client, f)
        await client.writer.drain()

    def conid(self, symbol: str) -> int:
        return 265_598 + sorted(self.symbols).index(symbol)

    def _contract_details(
        self, client: _Client, req_id: int, symbol: str, sec_type: str, exchange: str, currency: str
    ) -> None:
        if symbol not in self.symbols or sec_type not in ("STK", ""):
            text = "No security definition has been found for the request"
            self._send(client, 4, 2, req_id, 200, text, "")
            return
        # server ≥ 164: no version field; see IB's contractDetails message
        self._send(
            client, 10, req_id, symbol, "STK", "", 0, "", exchange or "SMART", currency or "USD",
            symbol, "NMS", "NMS", self.conid(symbol), 0.01, "", "ACTIVETIM,LMT,MKT",
            "SMART,NASDAQ", 1, 0, f"{symbol} INC", "NASDAQ", "", "Technology", "Computers",
            "Computers", "US/Eastern", "", "", "", 0, 0, 1, "", "", "26", "", "COMMON",
            1, 1, 100,
        )  # fmt: skip
        self._send(client, 52, 1, req_id)

    def _subscribe(self, client: _Client, req_id: int, symbol: str) -> None:
        if symbol not in self.symbols:
            text = "No security definition has been found for the request"
            self._send(client, 4, 2, req_id, 200, text, "")
            return
        sub = Subscription(req_id, symbol)
        self._send(client, 58, 1, req_id, 1)  # marketDataType: real-time
        sub.task = asyncio.ensure_future(self._stream(client, sub))
        client.subscriptions[req_id] = sub

    async def _stream(self, client: _Client, sub: Subscription) -> None:
        n = 0
        last, last_size, last_time = self._prices[sub.symbol], 100.0, int(time.time())
        while not client.writer.is_closing():
            n += 1
            mid = self._prices[sub.symbol] = round(
                self._prices[sub.symbol] * (1 + self._rng.gauss(0, 1e-4)), 2
            )
            bid, ask = round(mid - 0.01, 2), round(mid + 0.01, 2)
            self._send(client, 1, 6, sub.req_id, BID, bid, 300, 0)
            self._send(client, 1, 6, sub.req_id, ASK, ask, 200, 0)
            if n % self.trade_every == 0:
                last, last_size, last_time = (
                    mid,
                    float(self._rng.randint(1, 9) * 100),
                    int(time.time()),
                )
                self._send(client, 1, 6, sub.req_id, LAST, last, last_size, 0)
                self._send(client, 46, 6, sub.req_id, LAST_TIMESTAMP, last_time)
            self.sent.append(Snapshot(sub.symbol, bid, ask, last, last_size, last_time))
            with contextlib.suppress(ConnectionError):
                await client.writer.drain()
            await asyncio.sleep(self.interval_s)

    def _historical(self, client: _Client, f: list[str]) -> None:
        # 20, reqId, 12 contract fields, includeExpired, end, barSize, duration, useRTH, what, fmt
        req_id, symbol = int(f[1]), f[3]
        end_text, bar_size, duration = f[15], f[16], f[17]
        key = (symbol, end_text, bar_size, duration, f[19])
        now = self._clock()
        if now - self._historical_seen.get(key, -PACING_WINDOW_S) < PACING_WINDOW_S:
            text = "Historical Market Data Service error message:Pacing violation"
            self._send(client, 4, 2, req_id, 162, text, "")
            return
        self._historical_seen[key] = now
        if symbol not in self.symbols:
            self._send(client, 4, 2, req_id, 200, "No security definition", "")
            return
        end = int(datetime.strptime(end_text, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC).timestamp())
        step = 86_400 if bar_size == "1 day" else 60
        count = 5
        rows: list[object] = []
        price = self._prices[symbol]
        for i in range(count, 0, -1):
            start = end - i * step
            # daily bars come as exchange dates, intraday ones in epoch seconds (formatDate=2)
            stamp = datetime.fromtimestamp(start, UTC).strftime("%Y%m%d") if step > 60 else start
            o, c = price, round(price * 1.001, 2)
            rows += [stamp, o, max(o, c) + 0.05, min(o, c) - 0.05, c, 1000 * i, (o + c) / 2, 10]
            price = c
        self._send(client, 17, req_id, end - count * step, end, count, *rows)

    async def _close(self, client: _Client) -> None:
        for sub in client.subscriptions.values():
            if sub.task is not None:
                sub.task.cancel()
        client.subscriptions.clear()
        if client in self._clients:
            self._clients.remove(client)
        if not client.writer.is_closing():
            client.writer.close()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await client.writer.wait_closed()
