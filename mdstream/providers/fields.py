"""Field readers shared by the provider parsers: strict about types, units and sentinel values.

Every reader raises `Reject` with a reason a person can act on; the parsers catch it per message
element, so one bad element becomes one FrameError and the rest of the frame still counts.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from mdstream.core.batch import QUOTE, TRADE
from mdstream.providers.base import ProviderBar

# Sanity bounds: anything outside is an absurd value, not a market price/size/time.
MAX_PRICE = 10_000_000.0
MAX_SIZE = 1e12
MIN_TIME_NS = 946_684_800 * 10**9  # 2000-01-01
MAX_TIME_NS = 4_102_444_800 * 10**9  # 2100-01-01
_SYMBOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-/:^=_]{0,39}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)"
)


class Reject(ValueError):
    """A message element that cannot become a raw record; the message is the reason."""


def load_json(frame: bytes | str) -> Any:
    """Decode a text frame; Reject (not JSONDecodeError) when it is not JSON."""
    try:
        return json.loads(frame)
    except (ValueError, TypeError, RecursionError) as exc:
        raise Reject(f"malformed JSON: {exc}") from None


def element_bytes(element: Any) -> bytes:
    """The bytes of one element of a frame, kept in a dead letter."""
    try:
        return json.dumps(element, separators=(",", ":"), allow_nan=True).encode()
    except (TypeError, ValueError, RecursionError):
        return repr(element).encode()


def obj(value: Any, what: str = "message") -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Reject(f"{what} is a {type(value).__name__}, not a JSON object")
    return value


def finite_or_none(x: Any) -> float | None:
    """A number as float, or None when it is missing, not a number, or not finite (SDK fields
    that may be absent or NaN, where absence is data, not an error)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _present(o: Mapping[str, Any], key: str) -> Any:
    if key not in o or o[key] is None:
        raise Reject(f"missing field {key!r}")
    return o[key]


def real(o: Mapping[str, Any], key: str) -> float:
    """A finite JSON number (not a bool, not a string)."""
    value = _present(o, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Reject(f"field {key!r} is a {type(value).__name__}, not a number")
    value = float(value)
    if not math.isfinite(value):
        raise Reject(f"field {key!r} is not finite")
    return value


def price(o: Mapping[str, Any], key: str) -> float:
    """A usable price: 0 and negative values are providers' "no data" sentinels."""
    value = real(o, key)
    if value <= 0:
        raise Reject(f"field {key!r} = {value} is not a positive price (sentinel for no data)")
    if value > MAX_PRICE:
        raise Reject(f"field {key!r} = {value} is an absurd price")
    return value


def size(o: Mapping[str, Any], key: str, *, positive: bool = True) -> float:
    value = real(o, key)
    if value < 0 or (positive and value == 0):
        raise Reject(f"field {key!r} = {value} is not a positive size")
    if value > MAX_SIZE:
        raise Reject(f"field {key!r} = {value} is an absurd size")
    return value


def integer(o: Mapping[str, Any], key: str) -> int:
    value = _present(o, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(f"field {key!r} is a {type(value).__name__}, not an integer")
    if not -(2**63) <= value < 2**63:
        raise Reject(f"field {key!r} does not fit 64 bits")
    return value


def optional_integer(o: Mapping[str, Any], key: str) -> int | None:
    return None if o.get(key) is None else integer(o, key)


def text(o: Mapping[str, Any], key: str) -> str:
    value = _present(o, key)
    if not isinstance(value, str):
        raise Reject(f"field {key!r} is a {type(value).__name__}, not a string")
    return value


def symbol(o: Mapping[str, Any], key: str) -> str:
    value = text(o, key)
    if not _SYMBOL.fullmatch(value):
        raise Reject(f"field {key!r} = {value[:60]!r} is not a ticker symbol")
    return value


def conditions(o: Mapping[str, Any], key: str) -> str | None:
    """Sale conditions as one comma-separated string (None when absent or empty)."""
    value = o.get(key)
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(c, str | int) and not isinstance(c, bool) for c in value
    ):
        raise Reject(f"field {key!r} is not a list of condition codes")
    joined = ",".join(str(c) for c in value)
    return joined or None


def _checked_time(ns: int, key: str) -> int:
    if not MIN_TIME_NS <= ns < MAX_TIME_NS:
        raise Reject(f"field {key!r} = {ns} ns is outside 2000..2100")
    return ns


def epoch(o: Mapping[str, Any], key: str, unit: str) -> int:
    """An integer epoch time in `unit` ("s", "ms", "ns" or "auto": by magnitude) as ns."""
    value = integer(o, key)
    if unit == "auto":
        # s < 1e11 < ms < 1e14 < µs < 1e17 < ns, for any date between 1973 and 2100.
        magnitude = (10**11, 10**14, 10**17)
        unit = ("s", "ms", "us", "ns")[sum(value >= m for m in magnitude)]
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    return _checked_time(value * scale, key)


def rfc3339(o: Mapping[str, Any], key: str) -> int:
    """An RFC-3339 time with up to nanosecond digits (as Alpaca sends) as epoch ns."""
    value = text(o, key)
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise Reject(f"field {key!r} = {value[:60]!r} is not an RFC-3339 time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise Reject(f"field {key!r} = {value!r} is not a valid date-time")
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        raise Reject(f"field {key!r} = {value!r} is not a valid date-time") from None
    frac = int((m.group(7) or "0").ljust(9, "0"))
    zone = m.group(8)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return _checked_time(seconds * 10**9 + frac, key)


def trade(
    ts_ns: int,
    price_: float,
    volume: float,
    *,
    provider_ts_ns: int | None = None,
    sequence: int | None = None,
    conditions_: str | None = None,
) -> dict[str, Any]:
    """A RawTick trade record. Without a separate send time, the provider time is the event time."""
    return {
        "kind": TRADE,
        "timestamp": ts_ns,
        "provider_timestamp": ts_ns if provider_ts_ns is None else provider_ts_ns,
        "price": price_,
        "volume": volume,
        "bid": None,
        "ask": None,
        "sequence": sequence,
        "conditions": conditions_,
    }


def quote(
    ts_ns: int,
    bid: float,
    ask: float,
    *,
    provider_ts_ns: int | None = None,
    sequence: int | None = None,
    conditions_: str | None = None,
) -> dict[str, Any]:
    """A RawTick quote record (top of book; sizes are not part of the raw contract)."""
    return {
        "kind": QUOTE,
        "timestamp": ts_ns,
        "provider_timestamp": ts_ns if provider_ts_ns is None else provider_ts_ns,
        "price": None,
        "volume": None,
        "bid": bid,
        "ask": ask,
        "sequence": sequence,
        "conditions": conditions_,
    }


def check_ohlc(bar: ProviderBar) -> None:
    """OHLC consistency: high is the top and low the bottom of the bar."""
    if not bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high:
        raise Reject(f"inconsistent OHLC o={bar.open} h={bar.high} l={bar.low} c={bar.close}")
