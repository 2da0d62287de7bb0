"""Polygon.io (Massive) stocks websocket at the edge: a FeedProtocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mdstream.ingest.connection import FatalFeedError, FeedError, Handshake
from mdstream.ingest.credentials import read_secret
from mdstream.providers import polygon
from mdstream.providers.base import ParseResult

log = logging.getLogger(__name__)

WS_URL = "wss://socket.polygon.io/stocks"
KEY_NAME = "POLYGON_API_KEY"


def _raise_for_status(control: dict[str, Any]) -> None:
    """Fatal statuses stop the feed; `auth_timeout` means the server is closing: reconnect.
    Other statuses (`success` acks, `error` for a bad request) leave the connection up."""
    if control["fatal"]:
        raise FatalFeedError(f"polygon {control['status']}: {control['message']}")
    if control["status"] == "auth_timeout":
        raise FeedError(f"polygon {control['status']}: {control['message']}")
    if control["status"] == "error":
        log.warning("polygon error: %s", control["message"])


@dataclass
class PolygonFeed:
    """Trades, quotes and minute aggregates (`T.`, `Q.`, `AM.` channels)."""

    api_key: str
    url_: str = WS_URL
    channels: tuple[str, ...] = ("T", "Q", "AM")
    heartbeat_timeout_s: float = 30.0
    provider: str = polygon.PROVIDER

    @classmethod
    def from_env(cls, **kwargs: Any) -> PolygonFeed:
        return cls(read_secret(KEY_NAME), **kwargs)

    def url(self) -> str:
        return self.url_

    def secrets(self) -> tuple[str, ...]:
        return (self.api_key,)

    def parse(self, frame: bytes | str) -> ParseResult:
        return polygon.parse_ws(frame)

    async def handshake(self, conn: Handshake) -> None:
        await self._expect(conn, "connected")
        await conn.send(polygon.auth_message(self.api_key))
        await self._expect(conn, "auth_success")

    @staticmethod
    async def _expect(conn: Handshake, status: str) -> None:
        for control in await conn.control():
            _raise_for_status(control)
            if control["status"] == status:
                return
        raise FeedError(f"polygon handshake: expected status {status!r}")

    def subscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]:
        return [polygon.subscribe_message(symbols, self.channels)]

    def unsubscribe_messages(self, symbols: list[str]) -> list[dict[str, Any]]:
        return [polygon.unsubscribe_message(symbols, self.channels)]

    def check_control(self, control: dict[str, Any]) -> None:
        _raise_for_status(control)
