"""OHLCV+VWAP bars: the streaming core (open windows, each emitted once, final; late ticks revise
a retained final bar) and the batch core (a whole tape at once, over polars frames).

Streaming conventions (the defaults; all are settings of `PipelineConfig`):
- Windows are half-open [start, start + interval), aligned to the epoch in UTC (`closed="left"`;
  "right" gives (start, end]). A bar is stamped at its interval start (`label="start"`, as
  Databento and most vendors do; "end" stamps it at the window end).
- A window is final once stream time reaches `window end + grace` (one ns later when right-closed);
  stream time is the largest valid event time seen on the partition. It is then emitted once.
- An interval with no trades gives no bar (no forward fill), as providers publish none.
- Late ticks: inside the grace period they simply join their open window. Beyond it, a trade whose
  window is still retained (`correction retention` after finality) revises that bar: the bar is
  re-issued with `revision` + 1 and `correction` set; the original stays as it was sent. A late
  trade beyond retention, from another provider than the bar's source, or far from the bar's VWAP
  is dead-lettered with the reason: never silently merged, never silently dropped.
- Several providers report the same trades, so their ticks are never summed: each provider's
  ticks make a partial bar, and the final bar is the partial of the highest-priority provider that
  has data in that window (failover at window granularity when the primary falls silent).

Open and retained bars are plain JSON-able dicts so they can live in a changelogged table:
``{interval: {str(window_start): {provider: [open, open_ts, high, low, close, close_ts, volume,
price_x_volume, count]}}}`` and, for final bars,
``{interval: {str(window_start): "[source, open, …, count, revision, providers]"}}`` (JSON text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

OPEN, OPEN_TS, HIGH, LOW, CLOSE, CLOSE_TS, VOLUME, PV, COUNT = range(9)

OpenBars = dict[str, dict[str, dict[str, list[float]]]]
# Each retained bar is one JSON string of [source, *aggregate, revision, providers present]:
# state is deep-copied per step, and one string copies far cheaper than a dozen nested objects.
RetainedBars = dict[str, dict[str, str]]
_AGG = slice(1, 10)
_REVISION, _PRESENT = 10, 11

_UNITS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def interval_ns(label: str) -> int:
    """'1s' → 1e9, '5m' → 3e11: the labels used on topics and in events."""
    try:
        width = int(label[:-1]) * _UNITS[label[-1]]
    except (KeyError, ValueError):
        width = 0
    if width <= 0:
        raise ValueError(f"bad bar interval {label!r}: use <n>s, <n>m or <n>h with n > 0")
    return width


def window_start(ts: np.ndarray, width: int, closed: str = "left") -> np.ndarray:
    """The start of each timestamp's window of `width` ns, aligned to the epoch."""
    if closed == "right":
        shifted = ts - 1
        return shifted - shifted % width
    return ts - ts % width


def final_at(start: int, width: int, grace_ns: int, closed: str = "left") -> int:
    """Stream time from which the window starting at `start` can no longer receive a tick."""
    return start + width + grace_ns + (1 if closed == "right" else 0)


@dataclass(frozen=True)
class FinalBar:
    interval: str
    window_start: int
    window_end: int
    source: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trade_count: int
    providers_present: tuple[str, ...]
    revision: int = 0  # 0: the bar as first emitted; n > 0: its n-th correction


def _partials(ts: np.ndarray, price: np.ndarray, volume: np.ndarray, width: int, closed: str):
    """Per window of `width` ns: (start, open, open_ts, high, low, close, close_ts, v, pv, n)."""
    order = np.argsort(ts, kind="stable")  # ties keep arrival order
    ts, price, volume = ts[order], price[order], volume[order]
    starts = window_start(ts, width, closed)
    cut = np.flatnonzero(np.diff(starts)) + 1
    first = np.concatenate(([0], cut))
    last = np.concatenate((cut - 1, [len(ts) - 1]))
    pv = price * volume
    return zip(
        starts[first].tolist(),
        price[first].tolist(),
        ts[first].tolist(),
        np.maximum.reduceat(price, first).tolist(),
        np.minimum.reduceat(price, first).tolist(),
        price[last].tolist(),
        ts[last].tolist(),
        np.add.reduceat(volume, first).tolist(),
        np.add.reduceat(pv, first).tolist(),
        (last - first + 1).tolist(),
        strict=True,
    )


def _merge(agg: list, partial: Sequence[float]) -> None:
    """Fold a later-arriving partial aggregate into `agg` (same layout), in place."""
    o, o_ts, h, lo, c, c_ts, v, pv, n = partial
    if o_ts < agg[OPEN_TS]:
        agg[OPEN], agg[OPEN_TS] = o, o_ts
    if c_ts >= agg[CLOSE_TS]:
        agg[CLOSE], agg[CLOSE_TS] = c, c_ts
    agg[HIGH] = max(agg[HIGH], h)
    agg[LOW] = min(agg[LOW], lo)
    agg[VOLUME] += v
    agg[PV] += pv
    agg[COUNT] += n


def accumulate(
    open_bars: OpenBars,
    intervals: Mapping[str, int],
    provider: str,
    ts: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    closed: str = "left",
) -> OpenBars:
    """Add one provider's trades to the open bars (in place) and return them."""
    if len(ts) == 0:
        return open_bars
    for label, width in intervals.items():
        windows = open_bars.setdefault(label, {})
        for start, *partial in _partials(ts, price, volume, width, closed):
            by_provider = windows.setdefault(str(start), {})
            agg = by_provider.get(provider)
            if agg is None:
                by_provider[provider] = list(partial)
            else:
                _merge(agg, partial)
    return open_bars


def provider_rank(priority: Sequence[str]):
    """Sort key: listed providers in their order, then any other provider by name."""
    index = {p: i for i, p in enumerate(priority)}
    return lambda p: (index.get(p, len(index)), p)


def _final_bar(
    label: str, start: int, width: int, source: str, agg: Sequence, present, revision: int
) -> FinalBar:
    return FinalBar(
        interval=label,
        window_start=start,
        window_end=start + width,
        source=source,
        open=agg[OPEN],
        high=agg[HIGH],
        low=agg[LOW],
        close=agg[CLOSE],
        volume=agg[VOLUME],
        vwap=agg[PV] / agg[VOLUME],
        trade_count=int(agg[COUNT]),
        providers_present=tuple(present),
        revision=revision,
    )


def close_due(
    open_bars: OpenBars,
    intervals: Mapping[str, int],
    stream_time: int,
    grace_ns: int,
    priority: Sequence[str],
    closed: str = "left",
    retained: RetainedBars | None = None,
) -> list[FinalBar]:
    """Remove (in place) and return the windows that are final at `stream_time`, oldest first;
    with `retained`, keep each final bar's source aggregate there for later corrections."""
    rank = provider_rank(priority)
    final: list[FinalBar] = []
    for label, width in intervals.items():
        windows = open_bars.get(label, {})
        for key in sorted(
            (k for k in windows if final_at(int(k), width, grace_ns, closed) <= stream_time),
            key=int,
        ):
            by_provider = windows.pop(key)
            source = min(by_provider, key=rank)
            agg = by_provider[source]
            present = sorted(by_provider, key=rank)
            final.append(_final_bar(label, int(key), width, source, agg, present, 0))
            if retained is not None:
                retained.setdefault(label, {})[key] = json.dumps([source, *agg, 0, present])
    return final


def earliest_close(
    open_bars: OpenBars, intervals: Mapping[str, int], grace_ns: int, closed: str = "left"
) -> int | None:
    """The stream time at which the next open window becomes final (None when nothing is open)."""
    due = [
        final_at(int(k), width, grace_ns, closed)
        for label, width in intervals.items()
        for k in open_bars.get(label, {})
    ]
    return min(due) if due else None


def is_late(
    ts: np.ndarray, finest_ns: int, stream_time: int, grace_ns: int, closed: str = "left"
) -> np.ndarray:
    """Ticks whose finest window is already final: they can no longer join an open bar."""
    starts = window_start(ts, finest_ns, closed)
    return final_at(starts, finest_ns, grace_ns, closed) <= stream_time


def prune_retained(
    retained: RetainedBars,
    intervals: Mapping[str, int],
    stream_time: int,
    grace_ns: int,
    retention_ns: int,
    closed: str = "left",
) -> None:
    """Forget final bars whose correction retention has passed (in place): state stays bounded."""
    for label, width in intervals.items():
        windows = retained.get(label, {})
        for key in [
            k
            for k in windows
            if final_at(int(k), width, grace_ns, closed) + retention_ns <= stream_time
        ]:
            del windows[key]


def correct_late_trades(
    open_bars: OpenBars,
    retained: RetainedBars,
    intervals: Mapping[str, int],
    provider: str,
    ts: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    stream_time: int,
    grace_ns: int,
    retention_ns: int,
    max_deviation: float,
    closed: str = "left",
) -> tuple[list[FinalBar], list[str | None]]:
    """Apply late trades (beyond grace) to the bars they belong to: open windows of coarser
    intervals take them as usual, retained final bars are revised (a window that had no bar gets
    one, as revision 1). A trade is applied to every interval or to none; returns the revised
    bars (one per window, latest revision) and, per trade, None or why it was refused."""
    reasons: list[str | None] = []
    touched: dict[tuple[str, str], list] = {}

    def retained_bar(label: str, key: str) -> list | None:
        if (label, key) in touched:
            return touched[label, key]
        packed = retained.get(label, {}).get(key)
        return None if packed is None else json.loads(packed)

    for t, p, v in zip(ts.tolist(), price.tolist(), volume.tolist(), strict=True):
        plan: list[tuple[str, int, str, bool]] = []
        reason = None
        for label, width in intervals.items():
            start = int(window_start(np.int64(t), width, closed))
            key = str(start)
            due = final_at(start, width, grace_ns, closed)
            if due > stream_time:
                plan.append((label, width, key, False))
                continue
            if due + retention_ns <= stream_time:
                reason = (
                    f"event time {t} is beyond the grace period ({grace_ns} ns) and the "
                    f"correction retention ({retention_ns} ns) of stream time {stream_time}: "
                    f"its {label} bar is final and no longer kept"
                )
                break
            bar = retained_bar(label, key)
            if bar is not None and bar[0] != provider:
                reason = f"late {provider} trade: the final {label} bar came from {bar[0]}"
                break
            if bar is not None:
                vwap = bar[_AGG][PV] / bar[_AGG][VOLUME]
                if abs(p - vwap) > max_deviation * vwap:
                    reason = (
                        f"late trade at {p:.6g} is {abs(p - vwap) / vwap:.2%} from its final "
                        f"{label} bar's VWAP {vwap:.6g}: not merged"
                    )
                    break
            plan.append((label, width, key, True))
        reasons.append(reason)
        if reason is not None:
            continue
        partial = [p, t, p, p, p, t, v, p * v, 1]
        for label, width, key, final in plan:
            if not final:
                accumulate(open_bars, {label: width}, provider, *_one(t, p, v), closed=closed)
                continue
            bar = retained_bar(label, key)
            if bar is None:
                bar = [provider, *partial, 0, [provider]]
            else:
                agg = bar[_AGG]
                _merge(agg, partial)
                bar[_AGG] = agg
            touched[label, key] = bar
    revised = []
    for (label, key), bar in sorted(touched.items(), key=lambda kv: (kv[0][0], int(kv[0][1]))):
        bar[_REVISION] += 1
        retained.setdefault(label, {})[key] = json.dumps(bar)
        revised.append(
            _final_bar(
                label, int(key), intervals[label], bar[0], bar[_AGG], bar[_PRESENT], bar[_REVISION]
            )
        )
    return revised, reasons


def _one(t: int, p: float, v: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array([t], dtype=np.int64), np.array([p]), np.array([v])


# --------------------------------------------------------------------------------------------
# Batch bars: a whole tape at once (history, oracles, benchmarks), over polars frames.


@dataclass(frozen=True)
class BarConventions:
    """How ticks become bars. The defaults are Databento's (and most vendors') conventions.

    - `closed`: "left" puts a tick at exactly a boundary into the window that starts there
      ([start, end)); "right" into the window that ends there ((start, end]).
    - `label`: the bar's `ts` is its window "start" or "end".
    - `empty`: an interval with no trades gives "skip" (no bar), "carry" (a flat bar at the
      previous close with zero volume and count, between the first and last traded window), or
      "null" (a row whose prices are null).
    """

    closed: str = "left"
    label: str = "start"
    empty: str = "skip"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("closed", ("left", "right")),
            ("label", ("start", "end")),
            ("empty", ("skip", "carry", "null")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"bar convention {name}={getattr(self, name)!r}: use {allowed}")


def _width(interval: str | int) -> int:
    return interval if isinstance(interval, int) else interval_ns(interval)


def _bar_aggs(eligible: str | None = None) -> list[pl.Expr]:
    """OHLC (and VWAP) from the trades in the `eligible` boolean column (all when None);
    volume and trade count from every trade, as the consolidated tape counts them."""
    price, size = pl.col("price"), pl.col("size")
    if eligible is not None:
        price, size = price.filter(pl.col(eligible)), size.filter(pl.col(eligible))
    return [
        price.first().alias("open"),
        price.max().alias("high"),
        price.min().alias("low"),
        price.last().alias("close"),
        pl.col("size").sum().alias("volume"),
        (price.cast(pl.Float64) * size).sum().alias("_pv"),
        size.sum().alias("_pv_volume"),
        pl.len().cast(pl.Int64).alias("trade_count"),
    ]


_VWAP = (pl.col("_pv") / pl.col("_pv_volume")).alias("vwap")


# Lean/AlgoSeek sale-condition bits (QuantConnect's TradeConditionFlags), as in their tick files.
AVERAGE_PRICE = 1 << 20
DERIVATIVELY_PRICED = 1 << 9
VENDOR_PRICE_INELIGIBLE = AVERAGE_PRICE | DERIVATIVELY_PRICED


def vendor_like_eligibility(
    conditions: pl.Expr, suspicious: pl.Expr, ineligible: int = VENDOR_PRICE_INELIGIBLE
) -> pl.Expr:
    """Whether a trade may set a bar's open/high/low/close, as the SPY vendor bars behave:
    average-price and derivatively-priced prints (off-exchange reports of a price agreed
    earlier) and trades flagged suspicious count in volume but not in prices. `conditions` are
    the sale-condition bit flags (the tick files' hex column, parsed)."""
    return ((conditions & ineligible) == 0) & (suspicious == 0)


def _finish(
    grouped: pl.DataFrame, width: int, conventions: BarConventions, prices: list[str]
) -> pl.DataFrame:
    """Empty-interval policy, then the stamp: `ts` first, windows as explicit columns."""
    if conventions.empty != "skip" and grouped.height:
        lo, hi = grouped["window_start"].min(), grouped["window_start"].max()
        grid = pl.DataFrame({"window_start": np.arange(lo, hi + width, width, dtype=np.int64)})
        grouped = grid.join(grouped, on="window_start", how="left")
        if conventions.empty == "carry":
            # Each price column's "close" sibling carries forward and fills the empty rows.
            close_of = {c: c.rsplit("_", 1)[0] + "_close" if "_" in c else "close" for c in prices}
            grouped = grouped.with_columns(pl.col(sorted(set(close_of.values()))).forward_fill())
            grouped = grouped.with_columns(
                pl.coalesce(pl.col(c), pl.col(close)).alias(c) for c, close in close_of.items()
            )
            counts = [c for c in ("volume", "trade_count") if c in grouped.columns]
            grouped = grouped.with_columns(pl.col(counts).fill_null(0))
    stamp = pl.col("window_start") + (width if conventions.label == "end" else 0)
    rest = [c for c in grouped.columns if c != "window_start"]
    return grouped.with_columns(ts=stamp, window_end=pl.col("window_start") + width).select(
        "ts", "window_start", "window_end", *rest
    )


def trade_bars(
    trades: pl.DataFrame,
    interval: str | int,
    conventions: BarConventions = BarConventions(),
    *,
    eligible: str | None = None,
) -> pl.DataFrame:
    """OHLCV + VWAP + trade count per window from a tape with columns `ts` (epoch ns UTC),
    `price`, `size`, in arrival order (ties in `ts` keep it). Price and size keep their dtype, so
    integer-scaled prices aggregate exactly. `eligible` names a boolean column of the trades that
    may set prices (e.g. `vendor_like_eligibility`); the others count in volume only."""
    width = _width(interval)
    ts = trades["ts"].to_numpy()
    tape = trades.select("ts", "price", "size", *([eligible] if eligible else [])).with_columns(
        window_start=pl.Series(window_start(ts, width, conventions.closed))
    )
    grouped = (
        tape.with_row_index("_arrival")
        .sort("ts", "_arrival")
        .group_by("window_start", maintain_order=True)
        .agg(_bar_aggs(eligible))
        .with_columns(_VWAP)
        .drop("_pv", "_pv_volume")
        .sort("window_start")
    )
    return _finish(grouped, width, conventions, ["open", "high", "low", "close"])


def quote_bars(
    quotes: pl.DataFrame,
    interval: str | int,
    conventions: BarConventions = BarConventions(),
) -> pl.DataFrame:
    """Bid and ask OHLC per window from quotes (`ts`, `bid`, `ask`, optional `bid_size`,
    `ask_size`); sizes are the last quoted in the window (as Lean's quote bars)."""
    width = _width(interval)
    sizes = [c for c in ("bid_size", "ask_size") if c in quotes.columns]
    aggs = [
        agg
        for side in ("bid", "ask")
        for agg in (
            pl.col(side).drop_nulls().first().alias(f"{side}_open"),
            pl.col(side).max().alias(f"{side}_high"),
            pl.col(side).min().alias(f"{side}_low"),
            pl.col(side).drop_nulls().last().alias(f"{side}_close"),
        )
    ] + [pl.col(c).drop_nulls().last().alias(c) for c in sizes]
    ts = quotes["ts"].to_numpy()
    grouped = (
        quotes.with_columns(window_start=pl.Series(window_start(ts, width, conventions.closed)))
        .with_row_index("_arrival")
        .sort("ts", "_arrival")
        .group_by("window_start", maintain_order=True)
        .agg(aggs)
        .sort("window_start")
    )
    prices = [f"{s}_{f}" for s in ("bid", "ask") for f in ("open", "high", "low", "close")]
    return _finish(grouped, width, conventions, prices)


def roll_up(
    bars: pl.DataFrame, interval: str | int, conventions: BarConventions = BarConventions()
) -> pl.DataFrame:
    """Coarser trade bars from finer ones (minute → hour, …); equals direct aggregation when the
    coarser width is a multiple of the finer and both use the same closure. Empty (carried)
    finer bars are ignored, so `empty` applies afresh at the coarser level."""
    width = _width(interval)
    fine = bars.filter(pl.col("trade_count") > 0) if "trade_count" in bars.columns else bars
    starts = window_start(fine["window_start"].to_numpy(), width, "left")
    grouped = (
        fine.with_columns(window_start=pl.Series(starts), _pv=pl.col("vwap") * pl.col("volume"))
        .sort("window_start", maintain_order=True)
        .group_by("window_start", maintain_order=True)
        .agg(
            pl.col("open").drop_nulls().first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").drop_nulls().last(),
            pl.col("volume").sum(),
            pl.col("_pv").sum(),
            pl.col("trade_count").sum(),
        )
        .with_columns(vwap=pl.col("_pv") / pl.col("volume"))
        .drop("_pv")
    )
    return _finish(grouped, width, conventions, ["open", "high", "low", "close"])


def session_bars(
    trades: pl.DataFrame,
    opens: np.ndarray,
    closes: np.ndarray,
    sessions: Sequence[str],
    *,
    eligible: str | None = None,
) -> pl.DataFrame:
    """One bar per trading session from trades inside [open, close) of that session (the
    exchange's schedule, e.g. `mdstream.core.instruments.regular_sessions`); stamped at the open.
    `eligible` as in `trade_bars`."""
    ts = trades["ts"].to_numpy()
    idx = np.searchsorted(opens, ts, side="right") - 1
    inside = (idx >= 0) & (ts < closes[np.clip(idx, 0, None)])
    tape = trades.select("ts", "price", "size", *([eligible] if eligible else [])).with_columns(
        _session=pl.Series(np.where(inside, idx, -1))
    )
    grouped = (
        tape.with_row_index("_arrival")
        .filter(pl.col("_session") >= 0)
        .sort("ts", "_arrival")
        .group_by("_session", maintain_order=True)
        .agg(_bar_aggs(eligible))
        .with_columns(_VWAP)
        .drop("_pv", "_pv_volume")
        .sort("_session")
    )
    at = grouped["_session"].to_numpy()
    return grouped.select(
        pl.Series("session", [sessions[i] for i in at], dtype=pl.String),
        pl.Series("ts", opens[at], dtype=pl.Int64),
        pl.Series("window_start", opens[at], dtype=pl.Int64),
        pl.Series("window_end", closes[at], dtype=pl.Int64),
        pl.exclude("_session"),
    )
