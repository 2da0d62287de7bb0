"""Bloomberg and LSEG through their own SDKs, loaded only when used.

Neither SDK is a dependency of mdstream: `blpapi` is not on PyPI (Bloomberg's own index) and
needs a Terminal/B-PIPE; `lseg-data` needs an LSEG account. Using these adapters without the SDK
fails at once with what to install. Parsing lives in `mdstream.providers.bloomberg` / `.lseg`
and is tested on constructed messages; the session code here is thin on purpose.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from mdstream.ingest.protocols import ConnectionHealth, TickSink
from mdstream.providers import bloomberg, lseg
from mdstream.providers.base import ParseResult

log = logging.getLogger(__name__)

BLPAPI_HINT = (
    "Bloomberg needs the 'blpapi' package, which is not on PyPI: pip install "
    "--index-url=https://blpapi.bloomberg.com/repository/releases/python/simple/ blpapi "
    "(and a Bloomberg Terminal or B-PIPE to connect to)"
)
LSEG_HINT = (
    "LSEG needs the 'lseg-data' package: pip install lseg-data "
    "(and an LSEG Workspace or platform account, configured in lseg-data.config.json)"
)


class SdkMissing(RuntimeError):
    pass


def load_sdk(module: str, hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SdkMissing(hint) from exc


class _Adapter:
    """Shared subscription bookkeeping and health of the two SDK adapters."""

    provider = ""

    def __init__(self, sink: TickSink) -> None:
        self.sink = sink
        self.symbols: set[str] = set()
        self._health = ConnectionHealth(False, None, 0, 0, 0)
        self._stop = asyncio.Event()

    def health(self) -> ConnectionHealth:
        return self._health

    async def deliver(self, parsed: ParseResult) -> None:
        self._health.messages += 1
        self._health.last_message_ns = time.time_ns()
        for tick in parsed.ticks:
            await self.sink.submit(tick)
        for err in parsed.errors:
            self._health.errors += 1
            await self.sink.dead_letter(err)

    async def stop(self) -> None:
        self._stop.set()


class BloombergMarketData(_Adapter):
    """`StreamAdapter` over a blpapi session to ``//blp/mktdata`` ("IBM US Equity" securities)."""

    provider = bloomberg.PROVIDER
    FIELDS = "LAST_TRADE,SIZE_LAST_TRADE,BID,ASK"

    def __init__(self, sink: TickSink, host: str = "localhost", port: int = 8194) -> None:
        super().__init__(sink)
        self.blpapi = load_sdk("blpapi", BLPAPI_HINT)
        self.host, self.port = host, port
        self._session: Any = None

    async def run(self) -> None:
        blp = self.blpapi
        options = blp.SessionOptions()
        options.setServerHost(self.host)
        options.setServerPort(self.port)
        self._session = blp.Session(options)
        if not await asyncio.to_thread(self._session.start) or not await asyncio.to_thread(
            self._session.openService, "//blp/mktdata"
        ):
            raise ConnectionError(f"cannot reach Bloomberg at {self.host}:{self.port}")
        self._health.connected = True
        await self.subscribe(list(self.symbols))
        while not self._stop.is_set():
            event = await asyncio.to_thread(self._session.nextEvent, 500)
            for msg in event:
                if event.eventType() == blp.Event.SUBSCRIPTION_DATA:
                    security = msg.correlationId().value()
                    await self.deliver(bloomberg.market_data(security, msg.toPy(), time.time_ns()))
        self._session.stop()
        self._health.connected = False

    async def subscribe(self, symbols: Iterable[str]) -> None:
        symbols = list(symbols)
        self.symbols |= set(symbols)
        if self._session is None:
            return
        subs = self.blpapi.SubscriptionList()
        for s in symbols:
            subs.add(s, self.FIELDS, "", self.blpapi.CorrelationId(s))
        self._session.subscribe(subs)

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        symbols = list(symbols)
        self.symbols -= set(symbols)
        if self._session is None:
            return
        subs = self.blpapi.SubscriptionList()
        for s in symbols:
            subs.add(s, self.FIELDS, "", self.blpapi.CorrelationId(s))
        self._session.unsubscribe(subs)


class LSEGPricing(_Adapter):
    """`StreamAdapter` over an `lseg.data` pricing stream (RICs like "IBM.N")."""

    provider = lseg.PROVIDER
    FIELDS = ["TRDPRC_1", "TRDVOL_1", "SALTIM_MS", "TRADE_DATE", "BID", "ASK"]

    def __init__(self, sink: TickSink) -> None:
        super().__init__(sink)
        self.ld = load_sdk("lseg.data", LSEG_HINT)
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    def _on_update(self, fields: dict[str, Any], instrument: str, _stream: Any) -> None:
        parsed = lseg.pricing_update(instrument, fields, time.time_ns())
        assert self._loop is not None
        task = asyncio.run_coroutine_threadsafe(self.deliver(parsed), self._loop)
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def _open(self) -> None:
        if self._stream is not None:
            await asyncio.to_thread(self._stream.close)
            self._stream = None
        if self.symbols:
            self._stream = await asyncio.to_thread(
                self.ld.open_pricing_stream,
                universe=sorted(self.symbols),
                fields=self.FIELDS,
                on_update=self._on_update,
            )

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.ld.open_session)
        self._health.connected = True
        await self._open()
        await self._stop.wait()
        if self._stream is not None:
            await asyncio.to_thread(self._stream.close)
        await asyncio.to_thread(self.ld.close_session)
        self._health.connected = False

    async def subscribe(self, symbols: Iterable[str]) -> None:
        self.symbols |= set(symbols)
        if self._health.connected:
            await self._open()

    async def unsubscribe(self, symbols: Iterable[str]) -> None:
        self.symbols -= set(symbols)
        if self._health.connected:
            await self._open()
