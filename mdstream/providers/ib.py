"""Interactive Brokers objects (from `ib_async`) → raw ticks and provider bars. No I/O.

Works on anything shaped like ib_async's `Ticker` and `BarData` (attribute access only; the
package itself is not imported here). Facts it relies on (IB TWS API docs, field-notes §3):

- `reqMktData` delivers aggregated snapshots (~250 ms for stocks), not every trade: a `Ticker`
  holds the latest bid/ask/last with their sizes and `time` (UTC) of the update;
- −1 for a price or size means "no data" (e.g. no bid outside the session), and unset fields are
  NaN: both become None; a ticker with neither a quote nor a trade is an error ("no data");
- historical `BarData.date` is a `date` for daily bars (midnight in the exchange's zone) or a
  `datetime` (UTC when requested with ``formatDate=2``) for intraday bars, which IB stamps at the
  start of the bar; `volume`/`average` are −1 when the data type has none (MIDPOINT, BID_ASK).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mdstream.core.normalise import datetime_to_ns
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick
from mdstream.providers.fields import quote as quote_tick
from mdstream.providers.fields import trade as trade_tick

PROVIDER = "ib"
BAR_SIZES = {
    "1 secs": "1s",
    "5 secs": "5s",
    "15 secs": "15s",
    "30 secs": "30s",
    "1 min": "1m",
    "2 mins": "2m",
    "5 mins": "5m",
    "15 mins": "15m",
    "30 mins": "30m",
    "1 hour": "1h",
    "1 day": "1d",
}


def value(x: Any) -> float | None:
    """IB's number or None for its 'no data' forms: −1, NaN, None, infinities."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or f == -1.0:
        return None
    return f


def _ns(when: datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        raise ValueError(f"naive time {when}: IB times must be UTC-aware")
    return datetime_to_ns(when)


def _symbol(contract: Any) -> str | None:
    if contract is None:
        return None
    return getattr(contract, "localSymbol", None) or getattr(contract, "symbol", None) or None


def _payload(obj: Any) -> bytes:
    return repr(obj).encode()[:8192]


def ticker_ticks(ticker: Any, received_ns: int, provider: str = PROVIDER) -> ParseResult:
    """One `Ticker` snapshot → a QUOTE tick (if it has a bid or ask) and a TRADE tick (if it has a
    last price). The caller drops a TRADE it has seen before (snapshots repeat the last trade)."""
    out = ParseResult()
    symbol = _symbol(getattr(ticker, "contract", None))
    if not symbol:
        out.errors.append(
            FrameError(provider, "ticker without a contract symbol", _payload(ticker))
        )
        return out
    try:
        at = _ns(getattr(ticker, "time", None)) or received_ns
        last_at = _ns(getattr(ticker, "lastTimestamp", None)) or at
    except ValueError as exc:
        out.errors.append(FrameError(provider, str(exc), _payload(ticker)))
        return out
    bid, ask = value(getattr(ticker, "bid", None)), value(getattr(ticker, "ask", None))
    last, last_size = value(getattr(ticker, "last", None)), value(getattr(ticker, "lastSize", None))
    if bid is not None or ask is not None:
        out.ticks.append(
            ProviderTick(
                provider,
                symbol,
                quote_tick(
                    at,
                    bid,
                    ask,
                    provider_ts_ns=received_ns,
                ),
            )
        )
    if last is not None:
        out.ticks.append(
            ProviderTick(
                provider,
                symbol,
                trade_tick(
                    last_at,
                    last,
                    last_size,
                    provider_ts_ns=received_ns,
                ),
            )
        )
    if not out.ticks:
        out.errors.append(
            FrameError(provider, f"{symbol}: no data (bid/ask/last −1 or unset)", _payload(ticker))
        )
    return out


def historical_bars(
    bars: Iterable[Any],
    symbol: str,
    bar_size: str,
    *,
    exchange_tz: str = "America/New_York",
    provider: str = PROVIDER,
) -> ParseResult:
    """`BarData` list of one `reqHistoricalData` → bars (−1 volume → 0, −1 average → None)."""
    out = ParseResult()
    interval = BAR_SIZES.get(bar_size)
    if interval is None:
        out.errors.append(
            FrameError(provider, f"unsupported bar size {bar_size!r}", bar_size.encode())
        )
        return out
    zone = ZoneInfo(exchange_tz)
    for bar in bars:
        when = getattr(bar, "date", None)
        try:
            if isinstance(when, datetime):
                start = _ns(when)
            elif isinstance(when, date):
                start = _ns(datetime(when.year, when.month, when.day, tzinfo=zone))
            else:
                raise ValueError(f"bar without a date: {when!r}")
        except ValueError as exc:
            out.errors.append(FrameError(provider, str(exc), _payload(bar)))
            continue
        ohlc = [value(getattr(bar, k, None)) for k in ("open", "high", "low", "close")]
        if None in ohlc:
            out.errors.append(
                FrameError(provider, f"{symbol} {when}: no price (−1/NaN)", _payload(bar))
            )
            continue
        count = getattr(bar, "barCount", None)
        out.bars.append(
            ProviderBar(
                provider,
                symbol,
                interval,
                start,
                *ohlc,  # type: ignore[arg-type]
                value(getattr(bar, "volume", None)) or 0.0,
                int(count) if isinstance(count, int) and count >= 0 else None,
                value(getattr(bar, "average", None)),
            )
        )
    return out
