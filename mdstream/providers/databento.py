"""Databento DBN (decoded with the `databento-dbn` package) → raw ticks and provider bars.

Facts of the format this relies on (docs.databento.com, "Standards and conventions"):
prices are int64 in units of 1e-9 (`FIXED_PRICE_SCALE`), `UNDEF_PRICE` (int64 max) means no
price; `ts_event` is the matching-engine time and `ts_recv` the capture time, both epoch ns UTC;
OHLCV bars are stamped at the start of their interval and absent when nothing traded; records name
instruments by numeric `instrument_id`, mapped to symbols by the file's metadata (per date range).

- trades (`TradeMsg`) → TRADE ticks; mbp-1/tbbo (`MBP1Msg`): action T/F → a TRADE tick (with the
  top of book after it), any other action → a QUOTE tick of the top of book (skipped when neither
  side has a price);
- ohlcv-1s/1m/1h/1d (`OHLCVMsg`) → bars;
- definitions, symbol mappings, status and system messages → `control`; error messages and record
  types we do not read → errors.
"""

from __future__ import annotations

import bisect
from datetime import UTC, date, datetime
from typing import Any

import databento_dbn as dbn

from mdstream.core.batch import QUOTE, TRADE
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick

PROVIDER = "databento"
_SCALE = dbn.FIXED_PRICE_SCALE  # 1e9
_BAR_INTERVALS = {
    dbn.RType.OHLCV_1S: "1s",
    dbn.RType.OHLCV_1M: "1m",
    dbn.RType.OHLCV_1H: "1h",
    dbn.RType.OHLCV_1D: "1d",
}
_TRADE_ACTIONS = {dbn.Action.TRADE, dbn.Action.FILL}
_CONTROL = (dbn.InstrumentDefMsg, dbn.SymbolMappingMsg, dbn.StatusMsg, dbn.SystemMsg)
# Dead-letter payloads keep the start of an undecodable file, not all of it.
MAX_PAYLOAD = 64 * 1024


def price(raw: int) -> float | None:
    """Fixed-point 1e-9 → float, correctly rounded (true division, not × 1e-9)."""
    return None if raw == dbn.UNDEF_PRICE else raw / _SCALE


class SymbolMap:
    """instrument_id → symbol on a date, from the metadata's mappings (symbol → id intervals)."""

    def __init__(self, mappings: dict[str, list[dict[str, Any]]]) -> None:
        self._by_id: dict[int, list[tuple[date, date, str]]] = {}
        for raw_symbol, intervals in mappings.items():
            for iv in intervals:
                try:
                    ident = int(iv["symbol"])
                except (TypeError, ValueError):
                    continue
                self._by_id.setdefault(ident, []).append(
                    (iv["start_date"], iv["end_date"], raw_symbol)
                )
        for spans in self._by_id.values():
            spans.sort()

    def symbol(self, instrument_id: int, ts_ns: int) -> str | None:
        spans = self._by_id.get(instrument_id)
        if not spans:
            return None
        day = datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).date()
        i = bisect.bisect_right([s[0] for s in spans], day) - 1
        if i >= 0 and spans[i][0] <= day < spans[i][1]:
            return spans[i][2]
        return None


def _record_payload(record: Any) -> bytes:
    return repr(record).encode()[:MAX_PAYLOAD]


def parse_dbn(data: bytes, *, zstd: bool | None = None, provider: str = PROVIDER) -> ParseResult:
    """A whole DBN stream (zstd or not: told by its magic bytes) → records. Never raises."""
    result = ParseResult()
    if zstd is None:
        zstd = data[:4] == b"\x28\xb5\x2f\xfd"
    decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD if zstd else dbn.Compression.NONE)
    try:
        decoder.write(data)
        records = decoder.decode()
    except (dbn.DBNError, ValueError) as exc:
        result.errors.append(FrameError(provider, f"undecodable DBN: {exc}", data[:MAX_PAYLOAD]))
        return result
    if not records or not isinstance(records[0], dbn.Metadata):
        result.errors.append(
            FrameError(provider, "not a DBN stream (no metadata decoded)", data[:MAX_PAYLOAD])
        )
        return result
    symbols = SymbolMap(records[0].mappings)
    for record in records[1:]:
        _parse_record(record, symbols, provider, result)
    return result


def _parse_record(record: Any, symbols: SymbolMap, provider: str, out: ParseResult) -> None:
    if isinstance(record, _CONTROL):
        out.control.append({"type": type(record).__name__, "record": repr(record)})
        return
    if isinstance(record, dbn.ErrorMsg):
        out.errors.append(
            FrameError(provider, f"gateway error: {record.err}", _record_payload(record))
        )
        return
    ts_event = record.ts_event
    symbol = symbols.symbol(record.instrument_id, ts_event)
    if symbol is None:
        out.errors.append(
            FrameError(
                provider,
                f"instrument_id {record.instrument_id} not in the symbol mappings",
                _record_payload(record),
            )
        )
        return
    if isinstance(record, dbn.OHLCVMsg):
        interval = _BAR_INTERVALS.get(record.rtype)
        values = [price(record.open), price(record.high), price(record.low), price(record.close)]
        if interval is None or None in values:
            out.errors.append(
                FrameError(
                    provider, "unsupported or undefined OHLCV record", _record_payload(record)
                )
            )
            return
        out.bars.append(
            ProviderBar(provider, symbol, interval, ts_event, *values, float(record.volume))  # type: ignore[arg-type]
        )
        return
    if isinstance(record, dbn.TradeMsg | dbn.MBP1Msg):
        is_mbp = isinstance(record, dbn.MBP1Msg)
        bid = ask = None
        if is_mbp:
            level = record.levels[0]
            bid, ask = price(level.bid_px), price(level.ask_px)
        if record.action in _TRADE_ACTIONS:
            trade_price = price(record.price)
            if trade_price is None:
                out.errors.append(
                    FrameError(provider, "trade without a price", _record_payload(record))
                )
                return
            kind, px, size = TRADE, trade_price, float(record.size)
        elif is_mbp:
            if bid is None and ask is None:
                return  # an empty book side change carries no quote
            kind, px, size = QUOTE, None, None
        else:
            out.errors.append(
                FrameError(
                    provider, f"trade record with action {record.action}", _record_payload(record)
                )
            )
            return
        out.ticks.append(
            ProviderTick(
                provider,
                symbol,
                {
                    "kind": kind,
                    "timestamp": ts_event,
                    "provider_timestamp": record.ts_recv,
                    "price": px,
                    "volume": size,
                    "bid": bid,
                    "ask": ask,
                    "sequence": record.sequence,
                    "conditions": None,
                },
            )
        )
        return
    out.errors.append(
        FrameError(
            provider, f"unsupported DBN record {type(record).__name__}", _record_payload(record)
        )
    )
