"""CSV/Parquet rows (as polars frames) → raw ticks or provider bars, through a column mapping.

The mapping names, for each field of ours, the file's column (`ColumnMap`; a field whose column
is absent is None). Defaults are our own field names, so a file written with them needs no
mapping at all:

- ticks: ``symbol``, ``timestamp`` (event time), optional ``provider_timestamp`` (defaults to the
  event time), ``price``, ``volume``, ``bid``, ``ask``, ``kind`` (TRADE/QUOTE; when absent a row
  with a price is a TRADE, one with only bid/ask a QUOTE), ``sequence``, ``conditions``;
- bars: ``symbol``, ``timestamp`` (interval start), ``open``, ``high``, ``low``, ``close``,
  ``volume``, optional ``trade_count``, ``vwap``.

Timestamps may be integers (epoch in `time_unit`, default ns), polars datetimes, or strings
(ISO 8601 or a date); naive ones are read in `tz` (default UTC). A row whose timestamp, symbol or
prices cannot be read becomes a `FrameError` carrying the row; value checks (positive prices,
crossed quotes) are the pipeline's validation stage, not the parser's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import polars as pl

from mdstream.core.batch import QUOTE, TRADE
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick

_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


@dataclass(frozen=True)
class ColumnMap:
    symbol: str = "symbol"
    timestamp: str = "timestamp"
    provider_timestamp: str = "provider_timestamp"
    price: str = "price"
    volume: str = "volume"
    bid: str = "bid"
    ask: str = "ask"
    kind: str = "kind"
    sequence: str = "sequence"
    conditions: str = "conditions"
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    trade_count: str = "trade_count"
    vwap: str = "vwap"

    @classmethod
    def parse(cls, text: str | None) -> ColumnMap:
        """``"timestamp=ts,symbol=ticker"`` (ours=theirs) → a mapping; unknown fields are errors."""
        if not text:
            return cls()
        known = {f.name for f in fields(cls)}
        pairs = {}
        for item in text.split(","):
            ours, sep, theirs = item.partition("=")
            ours, theirs = ours.strip(), theirs.strip()
            if not sep or not theirs or ours not in known:
                raise ValueError(f"bad column mapping {item!r}: use ours=theirs, ours in {known}")
            pairs[ours] = theirs
        return cls(**pairs)


def timestamps_ns(values: pl.Series, time_unit: str, tz: str) -> pl.Series:
    """Any supported timestamp column → Int64 epoch ns UTC (null where unreadable)."""
    dtype = values.dtype
    if dtype.is_integer():
        return values.cast(pl.Int64) * _UNIT_NS[time_unit]
    if dtype.is_float():
        return (values * _UNIT_NS[time_unit]).round(0).cast(pl.Int64, strict=False)
    if dtype == pl.String:
        # The format is inferred from the column; text with offsets ("Z", "+02:00") is aware.
        values = values.str.to_datetime(time_unit="ns", strict=False)
        dtype = values.dtype
    if dtype == pl.Date:
        values = values.cast(pl.Datetime("ns"))
        dtype = values.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            values = values.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
        return values.dt.epoch("ns")
    raise TypeError(f"timestamp column of type {dtype} is not supported")


def _float(frame: pl.DataFrame, name: str) -> pl.Expr:
    if name not in frame.columns:
        return pl.lit(None, dtype=pl.Float64)
    return pl.col(name).cast(pl.Float64, strict=False)


Problems = list[tuple[str, pl.Series]]  # (reason, rows it applies to)


def _bad_rows(frame: pl.DataFrame, problems: Problems, provider: str) -> tuple[pl.Series, list]:
    """Which rows are bad, and one FrameError per bad row naming all of its problems."""
    bad = pl.Series([False] * frame.height)
    for _, mask in problems:
        bad |= mask
    if not bad.any():
        return bad, []
    reasons = [
        "; ".join(reason for reason, mask in problems if mask[i]) for i in bad.arg_true().to_list()
    ]
    rows = frame.filter(bad).iter_rows(named=True)
    errors = [
        FrameError(provider, reason, json.dumps(row, default=str).encode())
        for reason, row in zip(reasons, rows, strict=True)
    ]
    return bad, errors


def _normalise(
    frame: pl.DataFrame, cols: ColumnMap, time_unit: str, tz: str, numeric: tuple[str, ...]
) -> tuple[pl.DataFrame, Problems]:
    """Columns renamed to ours and typed; plus which rows failed and why."""
    missing = [c for c in (cols.symbol, cols.timestamp) if c not in frame.columns]
    if missing:
        raise KeyError(f"missing columns {missing} (have {frame.columns})")
    exprs = [
        pl.col(cols.symbol).cast(pl.String, strict=False).alias("symbol"),
        pl.lit(timestamps_ns(frame[cols.timestamp], time_unit, tz)).alias("timestamp"),
    ]
    for ours in numeric:
        exprs.append(_float(frame, getattr(cols, ours)).alias(ours))
    typed = frame.select(exprs)
    problems: Problems = [
        ("missing symbol", typed["symbol"].is_null() | (typed["symbol"] == "")),
        ("unreadable timestamp", typed["timestamp"].is_null()),
    ]
    # A value present in the file that did not convert to a number is bad; an empty one is None.
    for ours in numeric:
        name = getattr(cols, ours)
        if name in frame.columns:
            lost = typed[ours].is_null() & frame[name].is_not_null()
            if frame.schema[name] == pl.String:
                lost &= frame[name].str.strip_chars() != ""
            problems.append((f"non-numeric {ours}", lost))
    return typed, problems


def frame_ticks(
    frame: pl.DataFrame,
    provider: str,
    cols: ColumnMap | None = None,
    *,
    time_unit: str = "ns",
    tz: str = "UTC",
) -> ParseResult:
    cols = cols or ColumnMap()
    result = ParseResult()
    try:
        typed, problems = _normalise(frame, cols, time_unit, tz, ("price", "volume", "bid", "ask"))
    except (KeyError, TypeError, pl.exceptions.PolarsError) as exc:
        result.errors.append(FrameError(provider, f"unreadable table: {exc}", b""))
        return result
    extra = {}
    if cols.provider_timestamp in frame.columns:
        extra["provider_timestamp"] = pl.lit(
            timestamps_ns(frame[cols.provider_timestamp], time_unit, tz)
        )
    if cols.kind in frame.columns:
        extra["kind"] = pl.col(cols.kind).cast(pl.String).str.to_uppercase()
    if cols.sequence in frame.columns:
        extra["sequence"] = pl.col(cols.sequence).cast(pl.Int64, strict=False)
    if cols.conditions in frame.columns:
        extra["conditions"] = pl.col(cols.conditions).cast(pl.String)
    if extra:
        typed = typed.with_columns(frame.select(**extra))
    if "kind" not in typed.columns:
        typed = typed.with_columns(
            kind=pl.when(pl.col("price").is_not_null()).then(pl.lit(TRADE)).otherwise(pl.lit(QUOTE))
        )
    problems.append(("kind is neither TRADE nor QUOTE", ~typed["kind"].is_in([TRADE, QUOTE])))
    bad, result.errors = _bad_rows(frame, problems, provider)
    good = typed.filter(~bad)
    has_pts = "provider_timestamp" in good.columns
    has_seq = "sequence" in good.columns
    has_cond = "conditions" in good.columns
    for row in good.iter_rows(named=True):
        ts = row["timestamp"]
        pts = row["provider_timestamp"] if has_pts else None
        result.ticks.append(
            ProviderTick(
                provider,
                row["symbol"],
                {
                    "kind": row["kind"],
                    "timestamp": ts,
                    "provider_timestamp": ts if pts is None else pts,
                    "price": row["price"],
                    "volume": row["volume"],
                    "bid": row["bid"],
                    "ask": row["ask"],
                    "sequence": row["sequence"] if has_seq else None,
                    "conditions": row["conditions"] if has_cond else None,
                },
            )
        )
    return result


def frame_bars(
    frame: pl.DataFrame,
    provider: str,
    interval: str,
    cols: ColumnMap | None = None,
    *,
    time_unit: str = "ns",
    tz: str = "UTC",
) -> ParseResult:
    cols = cols or ColumnMap()
    result = ParseResult()
    try:
        typed, problems = _normalise(
            frame, cols, time_unit, tz, ("open", "high", "low", "close", "volume", "vwap")
        )
    except (KeyError, TypeError, pl.exceptions.PolarsError) as exc:
        result.errors.append(FrameError(provider, f"unreadable table: {exc}", b""))
        return result
    for name in ("open", "high", "low", "close", "volume"):
        problems.append((f"missing {name}", typed[name].is_null()))
    bad, result.errors = _bad_rows(frame, problems, provider)
    counts: pl.Series | None = None
    if cols.trade_count in frame.columns:
        counts = frame[cols.trade_count].cast(pl.Int64, strict=False).filter(~bad)
    good = typed.filter(~bad)
    for i, row in enumerate(good.iter_rows(named=True)):
        result.bars.append(
            ProviderBar(
                provider,
                row["symbol"],
                interval,
                row["timestamp"],
                row["open"],
                row["high"],
                row["low"],
                row["close"],
                row["volume"],
                None if counts is None else counts[i],
                row["vwap"],
            )
        )
    return result
