"""Bloomberg (`blpapi`) messages → raw ticks and provider bars. No I/O, no blpapi import.

The parser works on the plain-Python form of a message (`blpapi.Message.toPy()`, blpapi ≥ 3.23:
nested dicts/lists with datetimes), so it is tested on constructed dicts of the documented shapes:

- ``//blp/mktdata`` subscription, MarketDataEvents: ``MKTDATA_EVENT_TYPE`` TRADE / QUOTE /
  SUMMARY, ``LAST_TRADE`` (or ``LAST_PRICE``) with ``SIZE_LAST_TRADE``, ``BID``/``ASK``, and the
  event time ``TRADE_UPDATE_STAMP_RT`` / ``BID_UPDATE_STAMP_RT`` / ``ASK_UPDATE_STAMP_RT``
  (UTC datetimes); SUMMARY messages (initial paint) are control, not ticks;
- ``//blp/refdata`` IntradayBarResponse: ``{"barData": {"barTickData": [{"time", "open", "high",
  "low", "close", "volume", "numEvents", "value"}]}}`` (bar start, UTC);
- HistoricalDataResponse: ``{"securityData": {"security", "fieldData": [{"date", "PX_OPEN",
  "PX_HIGH", "PX_LOW", "PX_LAST", "PX_VOLUME"}], "securityError"?}}``.

Securities are Bloomberg strings ("IBM US Equity"); the symbol is their first word unless a
mapping is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mdstream.core.normalise import datetime_to_ns
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick
from mdstream.providers.fields import finite_or_none
from mdstream.providers.fields import quote as quote_tick
from mdstream.providers.fields import trade as trade_tick

PROVIDER = "bloomberg"


def symbol_of(security: str, mapping: Mapping[str, str] | None = None) -> str:
    if mapping and security in mapping:
        return mapping[security]
    return security.split()[0] if security.strip() else security


def _ns(when: Any) -> int | None:
    if not isinstance(when, datetime) or when.tzinfo is None:
        return None
    return datetime_to_ns(when)


def _payload(data: Any) -> bytes:
    return json.dumps(data, default=str).encode()[:8192]


def market_data(
    security: str,
    data: Mapping[str, Any],
    received_ns: int,
    *,
    mapping: Mapping[str, str] | None = None,
    provider: str = PROVIDER,
) -> ParseResult:
    out = ParseResult()
    symbol = symbol_of(security, mapping)
    event = data.get("MKTDATA_EVENT_TYPE")
    if event == "SUMMARY":
        out.control.append({"type": "summary", "security": security})
        return out
    if event == "TRADE":
        price = finite_or_none(data.get("LAST_TRADE", data.get("LAST_PRICE")))
        if price is None:
            out.errors.append(
                FrameError(provider, f"{security}: trade without a price", _payload(data))
            )
            return out
        at = _ns(data.get("TRADE_UPDATE_STAMP_RT")) or received_ns
        out.ticks.append(
            ProviderTick(
                provider,
                symbol,
                trade_tick(
                    at,
                    price,
                    finite_or_none(data.get("SIZE_LAST_TRADE")),
                    provider_ts_ns=received_ns,
                    conditions_=data.get("EVT_TRADE_CONDITION_CODE_RT"),
                ),
            )
        )
    elif event == "QUOTE":
        bid, ask = finite_or_none(data.get("BID")), finite_or_none(data.get("ASK"))
        if bid is None and ask is None:
            out.errors.append(
                FrameError(provider, f"{security}: quote without bid or ask", _payload(data))
            )
            return out
        stamps = [_ns(data.get(k)) for k in ("BID_UPDATE_STAMP_RT", "ASK_UPDATE_STAMP_RT")]
        at = max((s for s in stamps if s is not None), default=received_ns)
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
    else:
        out.errors.append(
            FrameError(provider, f"{security}: unknown event type {event!r}", _payload(data))
        )
    return out


def intraday_bars(
    security: str,
    response: Mapping[str, Any],
    interval: str,
    *,
    mapping: Mapping[str, str] | None = None,
    provider: str = PROVIDER,
) -> ParseResult:
    out = ParseResult()
    symbol = symbol_of(security, mapping)
    try:
        rows = response["barData"]["barTickData"]
    except (KeyError, TypeError):
        out.errors.append(FrameError(provider, "no barData.barTickData", _payload(response)))
        return out
    for row in rows:
        start = _ns(row.get("time"))
        values = [finite_or_none(row.get(k)) for k in ("open", "high", "low", "close", "volume")]
        if start is None or None in values:
            out.errors.append(FrameError(provider, f"{security}: bad bar", _payload(row)))
            continue
        count = row.get("numEvents")
        value = finite_or_none(row.get("value"))
        vwap = value / values[4] if value is not None and values[4] else None
        out.bars.append(
            ProviderBar(
                provider,
                symbol,
                interval,
                start,
                *values,  # type: ignore[arg-type]
                int(count) if isinstance(count, int) else None,
                vwap,
            )
        )
    return out


def historical_bars(
    response: Mapping[str, Any],
    *,
    exchange_tz: str = "America/New_York",
    mapping: Mapping[str, str] | None = None,
    provider: str = PROVIDER,
) -> ParseResult:
    out = ParseResult()
    data = response.get("securityData")
    if not isinstance(data, Mapping):
        out.errors.append(FrameError(provider, "no securityData", _payload(response)))
        return out
    security = str(data.get("security", ""))
    if data.get("securityError"):
        out.errors.append(
            FrameError(provider, f"{security}: {data['securityError']}", _payload(data))
        )
        return out
    zone = ZoneInfo(exchange_tz)
    symbol = symbol_of(security, mapping)
    for row in data.get("fieldData") or []:
        day = row.get("date")
        values = [finite_or_none(row.get(k)) for k in ("PX_OPEN", "PX_HIGH", "PX_LOW", "PX_LAST")]
        if not isinstance(day, date) or None in values:
            out.errors.append(FrameError(provider, f"{security}: bad daily row", _payload(row)))
            continue
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        out.bars.append(
            ProviderBar(
                provider,
                symbol,
                "1d",
                int(start.timestamp()) * 10**9,
                *values,
                finite_or_none(row.get("PX_VOLUME")) or 0.0,
            )
        )  # type: ignore[arg-type]
    return out
