"""Finnhub at the edge: the trade websocket (a FeedProtocol) and the REST candles/quote client."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from mdstream.ingest import http
from mdstream.ingest.connection import Handshake
from mdstream.ingest.credentials import read_secret, redact_text
from mdstream.ingest.protocols import Limiter, NoLimit
from mdstream.providers import finnhub
from mdstream.providers.base import ParseResult

log = logging.getLogger(__name__)

WS_URL = "wss://ws.finnhub.io"
REST_URL = "https://finnhub.io/api/v1"
KEY_NAME = "FINNHUB_API_KEY"
# Our bar frequencies → Finnhub candle resolutions.
FREQ_TO_RESOLUTION = {"1m": "1", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "1d": "D"}


@dataclass
class FinnhubFeed:
    """Trades over wss://ws.finnhub.io?token=KEY; Finnhub pings every few seconds when idle."""

    api_key: str
    base_url: str = WS_URL
    heartbeat_timeout_s: float = 30.0
    provider: str = finnhub.PROVIDER

    @classmethod
    def from_env(cls, **kwargs: Any) -> FinnhubFeed:
        return cls(read_secret(KEY_NAME), **kwargs)

    def url(self) -> str:
        return f"{self.base_url}?token={self.api_key}"

    def secrets(self) -> tuple[str, ...]:
        return (self.api_key,)

    def parse(self, frame: bytes | str) -> ParseResult:
        return finnhub.parse_ws(frame)

    async def handshake(self, conn: Handshake) -> None:
        return None  # the token is in the URL; a bad one is refused with HTTP 401

    def subscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]:
        return [finnhub.subscribe_message(s) for s in symbols]

    def unsubscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]:
        return [finnhub.unsubscribe_message(s) for s in symbols]

    def check_control(self, control: dict[str, Any]) -> None:
        # Finnhub reports request errors (too many symbols, bad message) on a healthy
        # connection: reconnecting would only repeat them.
        if control["type"] == "error":
            log.warning("finnhub error: %s", redact_text(control["message"], self.secrets()))


class FinnhubRest:
    """REST candles (a HistoricalSource for backfill) and quote snapshots."""

    provider = finnhub.PROVIDER
    max_span = timedelta(days=30)

    def __init__(
        self,
        api_key: str,
        session: aiohttp.ClientSession,
        limiter: Limiter | None = None,
        base_url: str = REST_URL,
    ) -> None:
        self._key = api_key
        self._session = session
        self._limiter = limiter or NoLimit()
        self._base = base_url.rstrip("/")

    async def _get(self, path: str, params: dict[str, str]) -> bytes:
        return await http.get(
            self._session,
            self._limiter,
            provider=self.provider,
            endpoint=path.strip("/"),
            url=f"{self._base}{path}",
            params=params,
            headers={"X-Finnhub-Token": self._key},
            secrets=(self._key,),
        )

    async def fetch(self, symbol: str, start: datetime, end: datetime, freq: str) -> ParseResult:
        resolution = FREQ_TO_RESOLUTION.get(freq)
        if resolution is None:
            raise ValueError(f"finnhub has no {freq!r} candles (have {sorted(FREQ_TO_RESOLUTION)})")
        params = {
            "symbol": symbol,
            "resolution": resolution,
            "from": str(int(start.timestamp())),
            "to": str(int(end.timestamp())),
        }
        body = await self._get("/stock/candle", params)
        result = finnhub.parse_candles(symbol, resolution, body)
        lo, hi = int(start.timestamp() * 1e9), int(end.timestamp() * 1e9)
        result.bars = [b for b in result.bars if lo <= b.start_ns < hi]
        return result

    async def quote(self, symbol: str) -> ParseResult:
        return finnhub.parse_quote(symbol, await self._get("/quote", {"symbol": symbol}))
