"""LSEG (Refinitiv) `lseg-data` updates and history rows → raw ticks and bars. No I/O.

Shapes (LSEG Data Library for Python, `lseg.data`):

- a pricing stream calls ``on_update(fields: dict, instrument_name: str, stream)`` with the changed
  fields of a RIC: ``TRDPRC_1`` (last trade) with ``TRDVOL_1``, ``BID``/``ASK``; the trade time is
  ``SALTIM_MS`` (ms after midnight UTC) of ``TRADE_DATE`` when both are present, else the
  receive time is used;
- ``ld.get_history(...)`` returns a frame indexed by timestamp whose rows (as dicts) carry
  ``OPEN_PRC``, ``HIGH_1``, ``LOW_1``, ``TRDPRC_1``, ``ACVOL_UNS`` (intraday summaries use
  ``OPEN``/``HIGH``/``LOW``/``CLOSE``/``VOLUME``); the timestamp is the interval start in UTC.

RICs ("IBM.N") are mapped to symbols by their part before the first dot unless a mapping is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from mdstream.core.normalise import datetime_to_ns
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick
from mdstream.providers.fields import finite_or_none
from mdstream.providers.fields import quote as quote_tick
from mdstream.providers.fields import trade as trade_tick

PROVIDER = "lseg"
_UTC = ZoneInfo("UTC")
_OHLCV = (
    ("OPEN_PRC", "HIGH_1", "LOW_1", "TRDPRC_1", "ACVOL_UNS"),
    ("OPEN", "HIGH", "LOW", "CLOSE", "VOLUME"),
)


def symbol_of(ric: str, mapping: Mapping[str, str] | None = None) -> str:
    if mapping and ric in mapping:
        return mapping[ric]
    return ric.split(".")[0] or ric


def _payload(data: Any) -> bytes:
    return json.dumps(data, default=str).encode()[:8192]


def _trade_ns(fields: Mapping[str, Any]) -> int | None:
    ms, day = fields.get("SALTIM_MS"), fields.get("TRADE_DATE")
    if ms is None or day is None:
        return None
    try:
        d = day if isinstance(day, date) else date.fromisoformat(str(day))
        at = datetime.combine(d, time(), _UTC) + timedelta(milliseconds=int(ms))
    except (TypeError, ValueError):
        return None
    return datetime_to_ns(at)


def pricing_update(
    ric: str,
    fields: Mapping[str, Any],
    received_ns: int,
    *,
    mapping: Mapping[str, str] | None = None,
    provider: str = PROVIDER,
) -> ParseResult:
    out = ParseResult()
    symbol = symbol_of(ric, mapping)
    trade = finite_or_none(fields.get("TRDPRC_1"))
    bid, ask = finite_or_none(fields.get("BID")), finite_or_none(fields.get("ASK"))
    if trade is not None:
        out.ticks.append(
            ProviderTick(
                provider,
                symbol,
                trade_tick(
                    _trade_ns(fields) or received_ns,
                    trade,
                    finite_or_none(fields.get("TRDVOL_1")),
                    provider_ts_ns=received_ns,
                ),
            )
        )
    if bid is not None or ask is not None:
        out.ticks.append(
            ProviderTick(
                provider,
                symbol,
                quote_tick(
                    received_ns,
                    bid,
                    ask,
                    provider_ts_ns=received_ns,
                ),
            )
        )
    if not out.ticks:
        # Updates of other fields (e.g. only NETCHNG_1) are normal: control, not an error,
        # unless a price field is present but unreadable.
        bad = [k for k in ("TRDPRC_1", "BID", "ASK") if k in fields and fields[k] is not None]
        if bad:
            out.errors.append(FrameError(provider, f"{ric}: unreadable {bad}", _payload(fields)))
        else:
            out.control.append({"type": "update", "ric": ric, "fields": sorted(fields)})
    return out


def history_rows(
    ric: str,
    rows: Iterable[tuple[datetime, Mapping[str, Any]]],
    interval: str,
    *,
    mapping: Mapping[str, str] | None = None,
    provider: str = PROVIDER,
) -> ParseResult:
    """(timestamp, row) pairs, as from ``frame.iterrows()`` of `get_history`, → bars."""
    out = ParseResult()
    symbol = symbol_of(ric, mapping)
    for when, row in rows:
        names = next((n for n in _OHLCV if n[3] in row), _OHLCV[0])
        values = [finite_or_none(row.get(k)) for k in names[:4]]
        if not isinstance(when, datetime) or None in values:
            out.errors.append(
                FrameError(provider, f"{ric}: bad history row", _payload({"t": when, **row}))
            )
            continue
        aware = when if when.tzinfo else when.replace(tzinfo=_UTC)
        out.bars.append(
            ProviderBar(
                provider,
                symbol,
                interval,
                int(aware.timestamp()) * 10**9 + aware.microsecond * 1000,
                *values,
                finite_or_none(row.get(names[4])) or 0.0,
            )
        )  # type: ignore[arg-type]
    return out
