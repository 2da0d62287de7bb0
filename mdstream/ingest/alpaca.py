"""Alpaca market data v2 at the edge: the websocket (a FeedProtocol) and the REST bars client."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from mdstream.ingest import http
from mdstream.ingest.connection import FatalFeedError, FeedError, Handshake
from mdstream.ingest.credentials import read_secret
from mdstream.ingest.protocols import Limiter, NoLimit
from mdstream.providers import alpaca
from mdstream.providers.base import ParseResult

log = logging.getLogger(__name__)

WS_URL = "wss://stream.data.alpaca.markets/v2/iex"
REST_URL = "https://data.alpaca.markets"
KEY_NAME, SECRET_NAME = "ALPACA_API_KEY", "ALPACA_API_SECRET"
FREQ_TO_TIMEFRAME = {v: k for k, v in alpaca.TIMEFRAMES.items()}


# A request the server rejected on a healthy connection: reconnecting would only repeat it.
REQUEST_ERRORS = frozenset({400, 410})


def _raise_for_error(control: dict[str, Any]) -> None:
    """Fatal codes stop the feed, request errors are logged, the rest (401 not authenticated,
    404 auth timeout, 407 slow client, 500) reconnect."""
    if control["type"] != "error":
        return
    text = f"alpaca error {control['code']}: {control['message']}"
    if control["fatal"]:
        raise FatalFeedError(text)
    if control["code"] in REQUEST_ERRORS:
        log.warning(text)
        return
    raise FeedError(text)


@dataclass
class AlpacaFeed:
    """Trades and quotes; the server pings at the websocket level."""

    key_id: str
    secret_key: str
    url_: str = WS_URL
    quotes: bool = True
    heartbeat_timeout_s: float = 30.0
    provider: str = alpaca.PROVIDER

    @classmethod
    def from_env(cls, **kwargs: Any) -> AlpacaFeed:
        return cls(read_secret(KEY_NAME), read_secret(SECRET_NAME), **kwargs)

    def url(self) -> str:
        return self.url_

    def secrets(self) -> tuple[str, ...]:
        return (self.key_id, self.secret_key)

    def parse(self, frame: bytes | str) -> ParseResult:
        return alpaca.parse_ws(frame)

    async def handshake(self, conn: Handshake) -> None:
        await self._expect(conn, "connected")
        await conn.send(alpaca.auth_message(self.key_id, self.secret_key))
        await self._expect(conn, "authenticated")

    @staticmethod
    async def _expect(conn: Handshake, message: str) -> None:
        for control in await conn.control():
            _raise_for_error(control)
            if control["type"] == "success" and control["message"] == message:
                return
        raise FeedError(f"alpaca handshake: expected success {message!r}")

    def subscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]:
        return [alpaca.subscribe_message(symbols, quotes=self.quotes)]

    def unsubscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]:
        return [alpaca.unsubscribe_message(symbols)]

    def check_control(self, control: dict[str, Any]) -> None:
        _raise_for_error(control)


class AlpacaBars:
    """`GET /v2/stocks/{symbol}/bars`, following `next_page_token`: a HistoricalSource."""

    provider = alpaca.PROVIDER
    max_span = timedelta(days=30)

    def __init__(
        self,
        key_id: str,
        secret_key: str,
        session: aiohttp.ClientSession,
        limiter: Limiter | None = None,
        base_url: str = REST_URL,
        page_limit: int = 10_000,
    ) -> None:
        self._headers = {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key}
        self._secrets = (key_id, secret_key)
        self._session = session
        self._limiter = limiter or NoLimit()
        self._base = base_url.rstrip("/")
        self._page_limit = page_limit
        self.pages = 0

    async def fetch(self, symbol: str, start: datetime, end: datetime, freq: str) -> ParseResult:
        timeframe = FREQ_TO_TIMEFRAME.get(freq)
        if timeframe is None:
            raise ValueError(f"alpaca has no {freq!r} bars (have {sorted(FREQ_TO_TIMEFRAME)})")
        params = {
            "timeframe": timeframe,
            "start": _rfc3339(start),
            "end": _rfc3339(end),
            "limit": str(self._page_limit),
            "adjustment": "raw",
        }
        out = ParseResult()
        token: str | None = None
        while True:
            page_params = params if token is None else {**params, "page_token": token}
            body = await http.get(
                self._session,
                self._limiter,
                provider=self.provider,
                endpoint="bars",
                url=f"{self._base}/v2/stocks/{symbol}/bars",
                params=page_params,
                headers=self._headers,
                secrets=self._secrets,
            )
            self.pages += 1
            page, token = alpaca.parse_bars_page(symbol, timeframe, body)
            out.extend(page)
            if token is None:
                return out


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a timezone (UTC)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
