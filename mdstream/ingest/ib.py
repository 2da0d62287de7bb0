"""Interactive Brokers through a running TWS or IB Gateway, with `ib_async` loaded lazily.

- `IBHistoricalSource` (a backfill `HistoricalSource`): `reqHistoricalData` per chunk, paced by the
  IB limiter (no identical request within 15 s, ≤ 60 requests per 10 minutes; see
  `mdstream.ingest.ratelimit`), bars stamped in UTC (``formatDate=2``).
- `IBMarketData` (a `StreamAdapter`): contracts qualified (IB's conId), then `reqMktData`
  snapshots turned into ticks on each pending-tickers event; a trade repeated by later snapshots
  is sent once; an unknown symbol is counted as an error and logged, the others go on.

Connection settings: ``MDSTREAM_IB_HOST`` (127.0.0.1), ``MDSTREAM_IB_PORT`` (7497, paper TWS),
``MDSTREAM_IB_CLIENT_ID`` (17). Tested against `emulators/ib.py`, a TWS speaking the socket
protocol, through the real ib_async client.

A historical request that TWS refuses raises :class:`IBRequestError` (the backfill then stops
with the chunk not done, so a rerun resumes it): ib_async would otherwise return no bars, and a
refused chunk would pass for an empty one. A pacing violation (error 162) also blocks the
endpoint in the limiter for IB's 15 s. "No data" for the period is an empty result, not an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from mdstream.ingest.protocols import ConnectionHealth, Limiter, TickSink
from mdstream.ingest.ratelimit import TokenBucketLimiter
from mdstream.providers.base import ParseResult
from mdstream.providers.ib import PROVIDER, historical_bars, ticker_ticks

log = logging.getLogger(__name__)

# freq → (IB bar size, IB duration of one request, the span that duration covers)
HISTORICAL = {
    "1m": ("1 min", "1 D", timedelta(days=1)),
    "5m": ("5 mins", "1 W", timedelta(weeks=1)),
    "1h": ("1 hour", "1 M", timedelta(days=28)),
    "1d": ("1 day", "1 Y", timedelta(days=365)),
}


PACING_PENALTY_S = 15.0


class IBRequestError(RuntimeError):
    """TWS refused a request: its error code and text."""

    def __init__(self, code: int, message: str, request: str) -> None:
        super().__init__(f"IB error {code} for {request}: {message}")
        self.code = code


def load_ib_async() -> Any:
    try:
        import ib_async
    except ImportError as exc:  # pragma: no cover - it is a dependency, but may be stripped
        raise RuntimeError(
            "Interactive Brokers needs the 'ib_async' package: pip install ib_async==2.1.0, "
            "and a running TWS or IB Gateway with the API enabled"
        ) from exc
    return ib_async


def connection_settings() -> tuple[str, int, int]:
    return (
        os.environ.get("MDSTREAM_IB_HOST", "127.0.0.1"),
        int(os.environ.get("MDSTREAM_IB_PORT", "7497")),
        int(os.environ.get("MDSTREAM_IB_CLIENT_ID", "17")),
    )


def ib_end_datetime(end: datetime) -> str:
    """IB's ``endDateTime`` in UTC: ``YYYYMMDD-HH:MM:SS``."""
    return end.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")


class IBHistoricalSource:
    provider = PROVIDER

    def __init__(
        self,
        freq: str = "1m",
        *,
        what_to_show: str = "TRADES",
        use_rth: bool = False,
        limiter: Limiter | None = None,
        ib: Any = None,
    ) -> None:
        if freq not in HISTORICAL:
            raise ValueError(f"IB backfill supports {sorted(HISTORICAL)}, not {freq!r}")
        self.freq = freq
        self.bar_size, self.duration, self.max_span = HISTORICAL[freq]
        self.what_to_show = what_to_show
        self.use_rth = use_rth
        self.limiter = limiter or TokenBucketLimiter(PROVIDER)
        self._ib = ib

    async def _connected(self) -> Any:
        if self._ib is None:
            ib_async = load_ib_async()
            self._ib = ib_async.IB()
            self._ib.RaiseRequestErrors = True  # a refused request raises, not returns []
        if not self._ib.isConnected():
            host, port, client_id = connection_settings()
            await self._ib.connectAsync(host, port, clientId=client_id)
        return self._ib

    async def fetch(self, symbol: str, start: datetime, end: datetime, freq: str) -> ParseResult:
        if freq != self.freq:
            raise ValueError(f"this source was set up for {self.freq} bars, not {freq}")
        ib = await self._connected()
        contract = load_ib_async().Stock(symbol, "SMART", "USD")
        end_text = ib_end_datetime(end)
        # The request key makes identical requests identical for the 15 s pacing rule.
        request = (
            f"historical/{symbol}|{self.bar_size}|{self.duration}|{end_text}|{self.what_to_show}"
        )
        await self.limiter.acquire(request)
        try:
            bars = await ib.reqHistoricalDataAsync(
                contract,
                endDateTime=end_text,
                durationStr=self.duration,
                barSizeSetting=self.bar_size,
                whatToShow=self.what_to_show,
                useRTH=self.use_rth,
                formatDate=2,
            )
        except load_ib_async().RequestError as exc:
            text = str(getattr(exc, "message", exc))
            if exc.code == 162 and "no data" in text.lower():
                bars = []
            else:
                if exc.code == 162 and "pacing" in text.lower():
                    self.limiter.retry_after(request, PACING_PENALTY_S)
                raise IBRequestError(exc.code, text, request) from exc
        result = historical_bars(bars or [], symbol, self.bar_size)
        lo, hi = start.timestamp() * 1e9, end.timestamp() * 1e9
        result.bars = [b for b in result.bars if lo <= b.start_ns < hi]
        return result


class IBMarketData:
    """`StreamAdapter` over `reqMktData`; reconnects with backoff until `stop()`."""

    provider = PROVIDER

    def __init__(self, sink: TickSink, *, ib: Any = None, max_backoff_s: float = 30.0) -> None:
        self.sink = sink
        self._ib = ib
        self._symbols: set[str] = set()
        self._tickers: dict[str, Any] = {}
        self._last_trade: dict[str, tuple[int, float, float | None]] = {}
        self._stop = asyncio.Event()
        self._max_backoff = max_backoff_s
        self._health = ConnectionHealth(False, None, 0, 0, 0)
        self._tasks: set[asyncio.Future[None]] = set()

    def health(self) -> ConnectionHealth:
        return self._health

    async def on_tickers(self, tickers: Iterable[Any]) -> None:
        """Pending tickers → ticks (repeated trades dropped) and dead letters."""
        now = time.time_ns()
        for ticker in tickers:
            parsed = ticker_ticks(ticker, now)
            self._health.messages += 1
            self._health.last_message_ns = now
            for tick in parsed.ticks:
                if tick.tick["kind"] == "TRADE":
                    key = (tick.tick["timestamp"], tick.tick["price"], tick.tick["volume"])
                    if self._last_trade.get(tick.symbol) == key:
                        continue
                    self._last_trade[tick.symbol] = key
                await self.sink.submit(tick)
            for err in parsed.errors:
                self._health.errors += 1
                await self.sink.dead_letter(err)

    async def run(self) -> None:
        ib_async = load_ib_async()
        self._ib = self._ib or ib_async.IB()
        backoff = 1.0
        while not self._stop.is_set():
            try:
                host, port, client_id = connection_settings()
                await self._ib.connectAsync(host, port, clientId=client_id)
                self._health.connected = True
                backoff = 1.0
                self._ib.pendingTickersEvent += self._schedule
                await self.subscribe(list(self._symbols))
                disconnected = asyncio.Event()
                self._ib.disconnectedEvent += disconnected.set
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait(
                    [stop, asyncio.ensure_future(disconnected.wait())],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("IB connection failed: %s; retrying in %.0f s", exc, backoff)
            self._health.connected = False
            self._tickers.clear()
            if self._stop.is_set():
                break
            self._health.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _schedule(self, tickers: Iterable[Any]) -> None:
        task = asyncio.ensure_future(self.on_tickers(list(tickers)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def subscribe(self, symbols: Iterable[str]) -> None:
        symbols = list(symbols)
        self._symbols |= set(symbols)
        if self._ib is None or not self._health.connected:
            return
        ib_async = load_ib_async()
        wanted = [s for s in symbols if s not in self._tickers]
        # ib_async subscribes only qualified contracts (with IB's conId): look them up first.
        contracts = await self._ib.qualifyContractsAsync(
            *(ib_async.Stock(s, "SMART", "USD") for s in wanted)
        )
        for symbol, contract in zip(wanted, contracts, strict=True):
            if contract is None:
                self._health.errors += 1
                log.warning("IB has no stock %s (SMART, USD): not subscribed", symbol)
                continue
            self._tickers[symbol] = self._ib.reqMktData(contract)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            self._symbols.discard(symbol)
            ticker = self._tickers.pop(symbol, None)
            if ticker is not None and self._ib is not None:
                self._ib.cancelMktData(ticker.contract)

    async def stop(self) -> None:
        self._stop.set()
        if self._ib is not None and self._ib.isConnected():
            self._ib.disconnect()
