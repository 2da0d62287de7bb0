"""Polygon.io (now Massive) stocks websocket frames.

wss://socket.polygon.io/stocks: on connect the server sends
`[{"ev":"status","status":"connected","message":...}]`; the client sends
`{"action":"auth","params":KEY}` and gets status `auth_success` or `auth_failed`, then
`{"action":"subscribe","params":"T.AAPL,Q.AAPL,AM.AAPL"}` (status `success` per channel).
Every frame is a JSON array of events tagged by `ev`: `T` trade (`sym`,`x`,`i` id,`z`,`p`,`s`,
`c` condition ids,`t` SIP time,`q` sequence), `Q` quote (`bx`,`bp`,`bs`,`ax`,`ap`,`as`,`c`,`t`,
`q`,`z`), `A`/`AM` second/minute aggregates (`o`,`h`,`l`,`c`,`v`,`vw`,`a`,`z` average trade
size,`s`/`e` window start/end). Times are epoch ms (nanoseconds on some newer feeds: recognised
by magnitude). Other status values (`auth_timeout`, `max_connections`, `error`...) are control.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mdstream.providers import fields as f
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick

PROVIDER = "polygon"

# Status values after which reconnecting with the same key cannot help.
FATAL_STATUSES = frozenset({"auth_failed", "max_connections"})
_AGGREGATES = {"A": "1s", "AM": "1m"}


def auth_message(key: str) -> dict[str, str]:
    return {"action": "auth", "params": key}


def channels(symbols: Iterable[str], prefixes: Iterable[str] = ("T", "Q", "AM")) -> str:
    return ",".join(f"{p}.{s}" for s in sorted(set(symbols)) for p in prefixes)


def subscribe_message(symbols: Iterable[str], prefixes: Iterable[str] = ("T", "Q", "AM")) -> dict:
    return {"action": "subscribe", "params": channels(symbols, prefixes)}


def unsubscribe_message(symbols: Iterable[str], prefixes: Iterable[str] = ("T", "Q", "AM")) -> dict:
    return {"action": "unsubscribe", "params": channels(symbols, prefixes)}


def _trade(m: dict[str, Any]) -> ProviderTick:
    tick = f.trade(
        f.epoch(m, "t", "auto"),
        f.price(m, "p"),
        f.size(m, "s"),
        sequence=f.optional_integer(m, "q"),
        conditions_=f.conditions(m, "c"),
    )
    return ProviderTick(PROVIDER, f.symbol(m, "sym"), tick)


def _quote(m: dict[str, Any]) -> ProviderTick:
    tick = f.quote(
        f.epoch(m, "t", "auto"),
        f.price(m, "bp"),
        f.price(m, "ap"),
        sequence=f.optional_integer(m, "q"),
        conditions_=f.conditions(m, "c"),
    )
    f.size(m, "bs", positive=False)
    f.size(m, "as", positive=False)
    return ProviderTick(PROVIDER, f.symbol(m, "sym"), tick)


def _aggregate(m: dict[str, Any], interval: str) -> ProviderBar:
    start, end = f.epoch(m, "s", "auto"), f.epoch(m, "e", "auto")
    if end <= start:
        raise f.Reject(f"aggregate window ends ({end}) before it starts ({start})")
    bar = ProviderBar(
        provider=PROVIDER,
        symbol=f.symbol(m, "sym"),
        interval=interval,
        start_ns=start,
        open=f.price(m, "o"),
        high=f.price(m, "h"),
        low=f.price(m, "l"),
        close=f.price(m, "c"),
        volume=f.size(m, "v", positive=False),
        trade_count=None,
        vwap=None if m.get("vw") is None else f.price(m, "vw"),
    )
    f.check_ohlc(bar)
    return bar


def parse_ws(frame: bytes | str) -> ParseResult:
    """One websocket text frame (a JSON array of events). Never raises."""
    raw = frame.encode() if isinstance(frame, str) else bytes(frame)
    out = ParseResult()
    try:
        events = f.load_json(raw)
        if not isinstance(events, list):
            raise f.Reject(f"frame is a {type(events).__name__}, not a JSON array")
    except f.Reject as exc:
        out.errors.append(FrameError(PROVIDER, str(exc), raw))
        return out
    for element in events:
        try:
            m = dict(f.obj(element, "event"))
            ev = f.text(m, "ev")
            if ev == "T":
                out.ticks.append(_trade(m))
            elif ev == "Q":
                out.ticks.append(_quote(m))
            elif ev in _AGGREGATES:
                out.bars.append(_aggregate(m, _AGGREGATES[ev]))
            elif ev == "status":
                status = f.text(m, "status")
                out.control.append(
                    {
                        "type": "status",
                        "status": status,
                        "message": str(m.get("message", "")),
                        "fatal": status in FATAL_STATUSES,
                    }
                )
            else:
                raise f.Reject(f"unknown event type {ev[:40]!r}")
        except f.Reject as exc:
            out.errors.append(FrameError(PROVIDER, str(exc), f.element_bytes(element)))
    return out
