"""WebSocket fan-out rules (pure): what a client may ask for, what it gets, and conflation.

Client → server frames (JSON):
    {"op": "subscribe", "instruments": ["AAPL", ...] | ["*"], "timeframes": ["1s", "1m"],
     "channels": ["bars", "latest", "alerts"]}
    {"op": "unsubscribe", ...same fields...}
    {"op": "ping"}
Server → client frames: {"type": "bar" | "latest" | "alert" | "error" | "subscribed" | "pong",
...}. A frame the server cannot accept gets an error frame; the connection stays open.

A slow client never holds the feed up: each client has a `Conflator`, a map from what a message
is about (a bar window, an instrument's latest price, an alert) to the newest message for it. A
client that reads slowly therefore gets the newest values, not a backlog; one that falls further
behind than `max_pending` distinct keys is disconnected.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CHANNELS = ("bars", "latest", "alerts")
WILDCARD = "*"


class BadRequest(ValueError):
    """A client frame that is not a valid request; the message goes back in an error frame."""


@dataclass(frozen=True)
class Request:
    op: str  # "subscribe", "unsubscribe", "ping"
    instruments: frozenset[str] = frozenset()
    timeframes: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()


def _names(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(f"'{what}' must be a list of non-empty strings")
    if len(value) > 1000:
        raise BadRequest(f"at most 1000 {what} per request")
    return frozenset(value)


def parse_request(
    text: str | bytes, known_instruments: Iterable[str] | None, timeframes: Iterable[str]
) -> Request:
    """Validate one client frame. `known_instruments` None: any instrument is accepted."""
    if len(text) > 65536:
        raise BadRequest("frame too large")
    try:
        frame = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise BadRequest("a frame is a JSON object")
    op = frame.get("op")
    if op == "ping":
        return Request("ping")
    if op not in ("subscribe", "unsubscribe"):
        raise BadRequest(f"unknown op {op!r}; use subscribe, unsubscribe or ping")
    instruments = _names(frame.get("instruments"), "instruments")
    if known_instruments is not None and WILDCARD not in instruments:
        unknown = sorted(instruments - set(known_instruments))
        if unknown:
            raise BadRequest(f"unknown instruments: {unknown}")
    allowed_tf = set(timeframes)
    tfs = _names(frame.get("timeframes", sorted(allowed_tf)), "timeframes")
    if tfs - allowed_tf:
        raise BadRequest(
            f"unknown timeframes {sorted(tfs - allowed_tf)}; have {sorted(allowed_tf)}"
        )
    channels = _names(frame.get("channels", list(CHANNELS)), "channels")
    if channels - set(CHANNELS):
        raise BadRequest(f"unknown channels {sorted(channels - set(CHANNELS))}; have {CHANNELS}")
    return Request(op, instruments, tfs, channels)


@dataclass
class Subscription:
    instruments: set[str] = field(default_factory=set)
    timeframes: set[str] = field(default_factory=set)
    channels: set[str] = field(default_factory=set)

    def apply(self, request: Request) -> None:
        if request.op == "subscribe":
            self.instruments |= request.instruments
            self.timeframes |= request.timeframes
            self.channels |= request.channels
        elif request.op == "unsubscribe":
            self.instruments -= request.instruments
            if not self.instruments:
                self.timeframes.clear()
                self.channels.clear()

    def wants(self, message: Mapping[str, Any]) -> bool:
        """Does this client want a server message (see `message_key` for the shapes)?"""
        channel = {"bar": "bars", "latest": "latest", "alert": "alerts"}.get(message["type"])
        if channel not in self.channels:
            return False
        if WILDCARD not in self.instruments and message["instrument"] not in self.instruments:
            return False
        return message["type"] != "bar" or message["timeframe"] in self.timeframes


def message_key(message: Mapping[str, Any]) -> tuple:
    """What a message is about: a newer message with the same key replaces an unsent older one."""
    kind = message["type"]
    if kind == "bar":
        return ("bar", message["instrument"], message["timeframe"], message["bar"]["start_ns"])
    if kind == "latest":
        return ("latest", message["instrument"])
    return (kind, message.get("id") or id(message))


class TooSlow(RuntimeError):
    """The client is more than `max_pending` distinct keys behind."""


class Conflator:
    """Pending messages of one client, at most one per key, oldest key first."""

    def __init__(self, max_pending: int = 5000) -> None:
        self.max_pending = max_pending
        self._pending: OrderedDict[tuple, str] = OrderedDict()
        self.conflated = 0  # messages replaced before they were sent

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, message: Mapping[str, Any], text: str) -> None:
        """Queue `text` (the encoded `message`), replacing an unsent one about the same thing."""
        key = message_key(message)
        if key in self._pending:
            self.conflated += 1
            self._pending[key] = text  # keeps its place: the newest value, sent in turn
            return
        if len(self._pending) >= self.max_pending:
            raise TooSlow(f"{len(self._pending)} messages pending")
        self._pending[key] = text

    def take(self, limit: int = 500) -> list[str]:
        out = []
        while self._pending and len(out) < limit:
            out.append(self._pending.popitem(last=False)[1])
        return out
