"""Alpha Vantage REST bodies → provider bars, quote ticks and control messages. No I/O.

Wire facts (alphavantage.co/documentation, field-notes §3):

- One endpoint, ``/query?function=...``; every value in the JSON is a string.
- TIME_SERIES_INTRADAY: ``"Meta Data"`` (``"6. Time Zone": "US/Eastern"``) and
  ``"Time Series (5min)"``: ``{"2024-07-01 09:30:00": {"1. open": "…", "2. high", "3. low",
  "4. close", "5. volume"}}``. Timestamps are local to the zone in the metadata and label the start
  of the bar; they are converted to UTC here.
- TIME_SERIES_DAILY: the same with ``"Time Series (Daily)"`` keyed by date (a daily bar starts at
  midnight of its date in the exchange's zone).
- GLOBAL_QUOTE: ``{"Global Quote": {"01. symbol", "05. price", "06. volume",
  "07. latest trading day", ...}}``. It carries no time of day, so the tick is stamped with the
  time of the poll (`received_ns`); an empty ``{}`` quote means an unknown symbol.
- Errors come back as HTTP 200 with a single key: ``Error Message`` (bad call or symbol),
  ``Note`` (per-minute limit hit) or ``Information`` (daily limit hit, or a premium endpoint).
  `control` reports them as ``{"type": "error" | "rate_limited", "scope": "minute" | "day"}``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mdstream.core.normalise import datetime_to_ns
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick
from mdstream.providers.fields import trade as trade_tick

PROVIDER = "alpha_vantage"
INTRADAY_INTERVALS = {"1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "1h"}
_DEFAULT_TZ = "US/Eastern"


def _number(text: Any) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text!r}")
    return value


def _zone(meta: dict[str, Any]) -> ZoneInfo:
    name = next((v for k, v in meta.items() if k.endswith("Time Zone")), _DEFAULT_TZ)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("America/New_York")


def _epoch_ns(local: datetime, zone: ZoneInfo) -> int:
    return datetime_to_ns(local.replace(tzinfo=zone))


def classify_error(body: dict[str, Any]) -> dict[str, Any] | None:
    """The control message of an HTTP-200 error body, or None for a data body."""
    if "Error Message" in body:
        return {"type": "error", "message": str(body["Error Message"])}
    if "Note" in body:
        return {"type": "rate_limited", "scope": "minute", "message": str(body["Note"])}
    if "Information" in body:
        return {"type": "rate_limited", "scope": "day", "message": str(body["Information"])}
    return None


def parse_body(
    raw: bytes, function: str, symbol: str, *, received_ns: int, provider: str = PROVIDER
) -> ParseResult:
    """One response body. Never raises: bad bodies and bad rows become `FrameError`s."""
    result = ParseResult()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        result.errors.append(FrameError(provider, f"not JSON: {exc}", raw))
        return result
    if not isinstance(body, dict):
        result.errors.append(FrameError(provider, "JSON body is not an object", raw))
        return result
    control = classify_error(body)
    if control is not None:
        result.control.append(control)
        if control["type"] == "error":
            result.errors.append(FrameError(provider, f"{function}: {control['message']}", raw))
        return result
    if function == "GLOBAL_QUOTE":
        _parse_quote(body, raw, symbol, received_ns, provider, result)
    elif function in ("TIME_SERIES_INTRADAY", "TIME_SERIES_DAILY"):
        _parse_series(body, raw, symbol, provider, result)
    else:
        result.errors.append(FrameError(provider, f"unsupported function {function}", raw))
    return result


def _parse_quote(
    body: dict[str, Any],
    raw: bytes,
    symbol: str,
    received_ns: int,
    provider: str,
    out: ParseResult,
) -> None:
    quote = body.get("Global Quote")
    if not isinstance(quote, dict):
        out.errors.append(FrameError(provider, "no 'Global Quote' object", raw))
        return
    if not quote:
        out.errors.append(FrameError(provider, f"empty quote: unknown symbol {symbol}?", raw))
        return
    try:
        price = _number(quote["05. price"])
        volume = _number(quote.get("06. volume", "nan")) if "06. volume" in quote else None
        quoted = str(quote.get("01. symbol", symbol))
    except (KeyError, ValueError, TypeError) as exc:
        out.errors.append(FrameError(provider, f"bad quote field: {exc!r}", raw))
        return
    out.ticks.append(
        ProviderTick(
            provider,
            quoted,
            trade_tick(
                received_ns,
                price,
                volume,
                provider_ts_ns=received_ns,
                conditions_=f"latest trading day {quote.get('07. latest trading day')}",
            ),
        )
    )


def _parse_series(
    body: dict[str, Any], raw: bytes, symbol: str, provider: str, out: ParseResult
) -> None:
    meta = body.get("Meta Data")
    key = next((k for k in body if k.startswith("Time Series")), None)
    if not isinstance(meta, dict) or key is None or not isinstance(body[key], dict):
        out.errors.append(FrameError(provider, "no 'Meta Data' / 'Time Series' objects", raw))
        return
    label = key[key.find("(") + 1 : key.rfind(")")]
    interval = "1d" if label == "Daily" else INTRADAY_INTERVALS.get(label)
    if interval is None:
        out.errors.append(FrameError(provider, f"unknown series {key!r}", raw))
        return
    zone = _zone(meta)
    fmt = "%Y-%m-%d" if interval == "1d" else "%Y-%m-%d %H:%M:%S"
    bars = []
    for stamp, row in body[key].items():
        try:
            start = _epoch_ns(datetime.strptime(stamp, fmt), zone)
            values = [
                _number(row[f"{i}. {n}"])
                for i, n in ((1, "open"), (2, "high"), (3, "low"), (4, "close"), (5, "volume"))
            ]
        except (KeyError, ValueError, TypeError) as exc:
            row_json = json.dumps({stamp: row}, default=str).encode()
            out.errors.append(FrameError(provider, f"bad bar {stamp!r}: {exc!r}", row_json))
            continue
        bars.append(ProviderBar(provider, symbol, interval, start, *values))
    bars.sort(key=lambda b: b.start_ns)  # the API lists the newest first
    out.bars += bars
