"""Finnhub: websocket trade frames and the REST `/quote` and `/stock/candle` bodies.

Websocket (wss://ws.finnhub.io?token=KEY): the client sends `{"type":"subscribe","symbol":"AAPL"}`;
the server sends `{"type":"trade","data":[{"s","p","t" (epoch ms),"v","c" (condition codes)}]}`,
`{"type":"ping"}` keepalives and `{"type":"error","msg":...}`. A bad token is refused at the
handshake (HTTP 401). An element with `v == 0` is a price update, not a trade.

REST `/quote?symbol=X`: `{"c","d","dp","h","l","o","pc","t" (epoch s)}`, all zeros for an unknown
symbol. `/stock/candle?symbol=X&resolution=R&from=S&to=S`: column arrays `o,h,l,c,v,t (epoch s)`
with `"s":"ok"`, or `{"s":"no_data"}`.
"""

from __future__ import annotations

from typing import Any

from mdstream.providers import fields as f
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick

PROVIDER = "finnhub"

# Candle resolutions → our interval names.
RESOLUTIONS = {"1": "1m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "D": "1d", "W": "1w"}


def subscribe_message(symbol: str) -> dict[str, str]:
    return {"type": "subscribe", "symbol": symbol}


def unsubscribe_message(symbol: str) -> dict[str, str]:
    return {"type": "unsubscribe", "symbol": symbol}


def _error(reason: str, payload: bytes) -> FrameError:
    return FrameError(PROVIDER, reason, payload)


def _trade(element: Any) -> ProviderTick:
    o = f.obj(element, "trade")
    volume = f.size(o, "v", positive=False)
    if volume == 0:
        raise f.Reject("price update without volume (v = 0), not a trade")
    tick = f.trade(
        f.epoch(o, "t", "ms"),
        f.price(o, "p"),
        volume,
        conditions_=f.conditions(o, "c"),
    )
    return ProviderTick(PROVIDER, f.symbol(o, "s"), tick)


def parse_ws(frame: bytes | str) -> ParseResult:
    """One websocket text frame. Never raises."""
    raw = frame.encode() if isinstance(frame, str) else bytes(frame)
    out = ParseResult()
    try:
        msg = f.obj(f.load_json(raw), "frame")
        kind = f.text(msg, "type")
        if kind == "trade":
            data = msg.get("data")
            if not isinstance(data, list):
                raise f.Reject("trade frame without a 'data' list")
            for element in data:
                try:
                    out.ticks.append(_trade(element))
                except f.Reject as exc:
                    out.errors.append(_error(f"trade: {exc}", f.element_bytes(element)))
        elif kind == "ping":
            out.control.append({"type": "ping"})
        elif kind == "error":
            out.control.append({"type": "error", "message": str(msg.get("msg", ""))})
        else:
            raise f.Reject(f"unknown message type {kind[:40]!r}")
    except f.Reject as exc:
        out.errors.append(_error(str(exc), raw))
    return out


def parse_quote(symbol: str, body: bytes | str) -> ParseResult:
    """A `/quote` body as a QUOTE-less snapshot: Finnhub's quote has the last price, no bid/ask,
    so it becomes a control record (`type: snapshot`), never a tick that looks like a trade."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    out = ParseResult()
    try:
        o = f.obj(f.load_json(raw), "quote")
        if o.get("t") == 0 or o.get("c") == 0:
            raise f.Reject(f"no data for {symbol[:40]!r} (zero quote: unknown symbol?)")
        out.control.append(
            {
                "type": "snapshot",
                "symbol": symbol,
                "timestamp": f.epoch(o, "t", "s"),
                "last": f.price(o, "c"),
                "open": f.price(o, "o"),
                "high": f.price(o, "h"),
                "low": f.price(o, "l"),
                "previous_close": f.price(o, "pc"),
            }
        )
    except f.Reject as exc:
        out.errors.append(_error(f"quote: {exc}", raw))
    return out


def parse_candles(symbol: str, resolution: str, body: bytes | str) -> ParseResult:
    """A `/stock/candle` body as bars; `{"s":"no_data"}` is an empty, error-free result."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    out = ParseResult()
    try:
        interval = RESOLUTIONS.get(resolution)
        if interval is None:
            raise f.Reject(f"unknown resolution {resolution[:10]!r}")
        o = f.obj(f.load_json(raw), "candles")
        status = f.text(o, "s")
        if status == "no_data":
            return out
        if status != "ok":
            raise f.Reject(f"status {status[:40]!r}")
        columns = {k: o.get(k) for k in ("t", "o", "h", "l", "c", "v")}
        if not all(isinstance(c, list) for c in columns.values()):
            raise f.Reject("candle columns t/o/h/l/c/v are not all lists")
        lengths = {len(c) for c in columns.values()}
        if len(lengths) != 1:
            raise f.Reject(f"candle columns have different lengths {sorted(lengths)}")
        for i in range(lengths.pop()):
            row = {k: c[i] for k, c in columns.items()}
            try:
                out.bars.append(_bar(symbol, interval, row))
            except f.Reject as exc:
                out.errors.append(_error(f"candle: {exc}", f.element_bytes(row)))
    except f.Reject as exc:
        out.errors.append(_error(f"candles: {exc}", raw))
    return out


def _bar(symbol: str, interval: str, row: dict[str, Any]) -> ProviderBar:
    bar = ProviderBar(
        provider=PROVIDER,
        symbol=symbol,
        interval=interval,
        start_ns=f.epoch(row, "t", "s"),
        open=f.price(row, "o"),
        high=f.price(row, "h"),
        low=f.price(row, "l"),
        close=f.price(row, "c"),
        volume=f.size(row, "v", positive=False),
        trade_count=None,
        vwap=None,
    )
    f.check_ohlc(bar)
    return bar
