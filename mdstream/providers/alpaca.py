"""Alpaca market data v2: websocket frames and the REST `/v2/stocks/{symbol}/bars` body.

Websocket (wss://stream.data.alpaca.markets/v2/{feed}): every server frame is a JSON array of
messages tagged by `T`. Control: `success` (`msg` "connected", then "authenticated"),
`subscription` (the full current subscription lists), `error` (`code`, `msg`: 400 invalid syntax,
401 not authenticated, 402 auth failed, 403 already authenticated, 404 auth timeout, 405 symbol
limit exceeded, 406 connection limit exceeded, 407 slow client, 409 insufficient subscription,
500 internal error). Data: `t` trade (`S`,`i` id,`x`,`p`,`s`,`c`,`t`,`z`), `q` quote
(`bx`,`bp`,`bs`,`ax`,`ap`,`as`,`c`,`t`,`z`), `b` minute bar, `u` updated (late-corrected) minute
bar, `d` daily bar (`o`,`h`,`l`,`c`,`v`,`t` start,`n` trades,`vw`), `c` trade correction
(`oi`,`op`,`os`,`oc` original; `ci`,`cp`,`cs`,`cc` corrected) and `x` trade cancel/error
(`i`,`p`,`s`,`a`). Times are RFC-3339 with up to nanosecond digits.

Corrections and cancels: the raw contract (`RawTick`) can add a trade but not retract one, and
the pipeline sums every TRADE into bars. Publishing a corrected print as another trade would count
its volume twice, and a cancel has no tick form at all. So both are parsed and checked, returned
as `control` records (`type` "correction"/"cancel") that carry `unapplied` (the reason) and `raw`
(the message): the ingest edge keeps them whole in the dead-letter topic, from which they can be
replayed once the contract can express retractions. They are never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mdstream.providers import fields as f
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick

PROVIDER = "alpaca"

# Error codes after which reconnecting with the same credentials/plan cannot help.
FATAL_ERRORS = {
    402: "auth failed",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    409: "insufficient subscription",
}
_BAR_INTERVALS = {"b": "1m", "u": "1m", "d": "1d"}
TIMEFRAMES = {"1Min": "1m", "5Min": "5m", "15Min": "15m", "1Hour": "1h", "1Day": "1d"}


def auth_message(key: str, secret: str) -> dict[str, str]:
    return {"action": "auth", "key": key, "secret": secret}


def subscribe_message(symbols: Iterable[str], *, quotes: bool = True) -> dict[str, Any]:
    syms = sorted(set(symbols))
    return {"action": "subscribe", "trades": syms, "quotes": syms if quotes else []}


def unsubscribe_message(symbols: Iterable[str]) -> dict[str, Any]:
    syms = sorted(set(symbols))
    return {"action": "unsubscribe", "trades": syms, "quotes": syms}


def _trade(m: dict[str, Any]) -> ProviderTick:
    tick = f.trade(
        f.rfc3339(m, "t"),
        f.price(m, "p"),
        f.size(m, "s"),
        sequence=f.optional_integer(m, "i"),
        conditions_=f.conditions(m, "c"),
    )
    return ProviderTick(PROVIDER, f.symbol(m, "S"), tick)


def _quote(m: dict[str, Any]) -> ProviderTick:
    tick = f.quote(
        f.rfc3339(m, "t"), f.price(m, "bp"), f.price(m, "ap"), conditions_=f.conditions(m, "c")
    )
    f.size(m, "bs", positive=False)
    f.size(m, "as", positive=False)
    return ProviderTick(PROVIDER, f.symbol(m, "S"), tick)


def _bar(m: dict[str, Any], interval: str) -> ProviderBar:
    bar = ProviderBar(
        provider=PROVIDER,
        symbol=f.symbol(m, "S"),
        interval=interval,
        start_ns=f.rfc3339(m, "t"),
        open=f.price(m, "o"),
        high=f.price(m, "h"),
        low=f.price(m, "l"),
        close=f.price(m, "c"),
        volume=f.size(m, "v", positive=False),
        trade_count=f.optional_integer(m, "n"),
        vwap=None if m.get("vw") is None else f.price(m, "vw"),
    )
    f.check_ohlc(bar)
    return bar


def _correction(m: dict[str, Any], raw: bytes) -> dict[str, Any]:
    return {
        "type": "correction",
        "symbol": f.symbol(m, "S"),
        "timestamp": f.rfc3339(m, "t"),
        "original": {"id": f.integer(m, "oi"), "price": f.price(m, "op"), "size": f.size(m, "os")},
        "corrected": {
            "id": f.integer(m, "ci"),
            "price": f.price(m, "cp"),
            "size": f.size(m, "cs"),
            "conditions": f.conditions(m, "cc"),
        },
        "unapplied": "trade correction: the raw contract cannot retract the original trade",
        "raw": raw,
    }


def _cancel(m: dict[str, Any], raw: bytes) -> dict[str, Any]:
    action = f.text(m, "a")
    if action not in ("C", "E"):
        raise f.Reject(f"cancel action {action[:10]!r} is neither C (cancel) nor E (error)")
    return {
        "type": "cancel",
        "symbol": f.symbol(m, "S"),
        "timestamp": f.rfc3339(m, "t"),
        "id": f.integer(m, "i"),
        "price": f.price(m, "p"),
        "size": f.size(m, "s"),
        "action": action,
        "unapplied": "trade cancel: the raw contract cannot retract the cancelled trade",
        "raw": raw,
    }


def _control(kind: str, m: dict[str, Any]) -> dict[str, Any]:
    if kind == "success":
        return {"type": "success", "message": f.text(m, "msg")}
    if kind == "error":
        code = f.integer(m, "code")
        return {
            "type": "error",
            "code": code,
            "message": str(m.get("msg", "")),
            "fatal": code in FATAL_ERRORS,
        }
    lists = {k: v for k, v in m.items() if k != "T"}
    if not all(isinstance(v, list) for v in lists.values()):
        raise f.Reject("subscription message with a non-list channel")
    return {"type": "subscription", **lists}


def parse_ws(frame: bytes | str) -> ParseResult:
    """One websocket text frame (a JSON array of messages). Never raises."""
    raw = frame.encode() if isinstance(frame, str) else bytes(frame)
    out = ParseResult()
    try:
        messages = f.load_json(raw)
        if not isinstance(messages, list):
            raise f.Reject(f"frame is a {type(messages).__name__}, not a JSON array")
    except f.Reject as exc:
        out.errors.append(FrameError(PROVIDER, str(exc), raw))
        return out
    for element in messages:
        try:
            m = dict(f.obj(element))
            kind = f.text(m, "T")
            if kind == "t":
                out.ticks.append(_trade(m))
            elif kind == "q":
                out.ticks.append(_quote(m))
            elif kind in _BAR_INTERVALS:
                out.bars.append(_bar(m, _BAR_INTERVALS[kind]))
            elif kind == "c":
                out.control.append(_correction(m, f.element_bytes(element)))
            elif kind == "x":
                out.control.append(_cancel(m, f.element_bytes(element)))
            elif kind in ("success", "error", "subscription"):
                out.control.append(_control(kind, m))
            else:
                raise f.Reject(f"unknown message type {kind[:40]!r}")
        except f.Reject as exc:
            out.errors.append(FrameError(PROVIDER, str(exc), f.element_bytes(element)))
    return out


def parse_bars_page(
    symbol: str, timeframe: str, body: bytes | str
) -> tuple[ParseResult, str | None]:
    """One page of `/v2/stocks/{symbol}/bars`: the bars and the `next_page_token` (None: last)."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    out = ParseResult()
    try:
        interval = TIMEFRAMES.get(timeframe)
        if interval is None:
            raise f.Reject(f"unknown timeframe {timeframe[:10]!r}")
        page = f.obj(f.load_json(raw), "bars page")
        bars = page.get("bars") or []  # Alpaca sends null when the range has no bars
        if not isinstance(bars, list):
            raise f.Reject("'bars' is not a list")
        token = page.get("next_page_token")
        if token is not None and (not isinstance(token, str) or not token):
            raise f.Reject("'next_page_token' is neither null nor a token")
    except f.Reject as exc:
        out.errors.append(FrameError(PROVIDER, f"bars page: {exc}", raw))
        return out, None
    for element in bars:
        try:
            out.bars.append(_bar({**f.obj(element, "bar"), "S": symbol}, interval))
        except f.Reject as exc:
            out.errors.append(FrameError(PROVIDER, f"bar: {exc}", f.element_bytes(element)))
    return out, token
