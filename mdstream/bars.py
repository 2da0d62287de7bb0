"""Event-time OHLCV+VWAP bars: trades go into open windows; each window is emitted once, final.

Conventions (the defaults; the intervals and grace are settings of `PipelineConfig`):
- Windows are half-open [start, start + interval), aligned to the epoch in UTC.
- A bar is stamped at its interval start (as Databento and most vendors do).
- A window is final once stream time reaches `window end + grace`; stream time is the largest
  valid event time seen on the partition. It is then emitted once and forgotten.
- An interval with no trades gives no bar (no forward fill), as providers publish none.
- Several providers report the same trades, so their ticks are never summed: each provider's
  ticks make a partial bar, and the final bar is the partial of the highest-priority provider that
  has data in that window (failover at window granularity when the primary falls silent).

Open bars are plain JSON-able dicts so they can live in a changelogged table:
``{interval: {str(window_start): {provider: [open, open_ts, high, low, close, close_ts, volume,
price_x_volume, count]}}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

OPEN, OPEN_TS, HIGH, LOW, CLOSE, CLOSE_TS, VOLUME, PV, COUNT = range(9)

OpenBars = dict[str, dict[str, dict[str, list[float]]]]

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


def _partials(ts: np.ndarray, price: np.ndarray, volume: np.ndarray, width: int):
    """Per window of `width` ns: (start, open, open_ts, high, low, close, close_ts, v, pv, n)."""
    order = np.argsort(ts, kind="stable")  # ties keep arrival order
    ts, price, volume = ts[order], price[order], volume[order]
    starts = ts - ts % width
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


def accumulate(
    open_bars: OpenBars,
    intervals: Mapping[str, int],
    provider: str,
    ts: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
) -> OpenBars:
    """Add one provider's trades to the open bars (in place) and return them."""
    if len(ts) == 0:
        return open_bars
    for label, width in intervals.items():
        windows = open_bars.setdefault(label, {})
        for start, o, o_ts, h, lo, c, c_ts, v, pv, n in _partials(ts, price, volume, width):
            by_provider = windows.setdefault(str(start), {})
            agg = by_provider.get(provider)
            if agg is None:
                by_provider[provider] = [o, o_ts, h, lo, c, c_ts, v, pv, n]
                continue
            if o_ts < agg[OPEN_TS]:
                agg[OPEN], agg[OPEN_TS] = o, o_ts
            if c_ts >= agg[CLOSE_TS]:
                agg[CLOSE], agg[CLOSE_TS] = c, c_ts
            agg[HIGH] = max(agg[HIGH], h)
            agg[LOW] = min(agg[LOW], lo)
            agg[VOLUME] += v
            agg[PV] += pv
            agg[COUNT] += n
    return open_bars


def provider_rank(priority: Sequence[str]):
    """Sort key: listed providers in their order, then any other provider by name."""
    index = {p: i for i, p in enumerate(priority)}
    return lambda p: (index.get(p, len(index)), p)


def close_due(
    open_bars: OpenBars,
    intervals: Mapping[str, int],
    stream_time: int,
    grace_ns: int,
    priority: Sequence[str],
) -> list[FinalBar]:
    """Remove (in place) and return the windows that are final at `stream_time`, oldest first."""
    rank = provider_rank(priority)
    final: list[FinalBar] = []
    for label, width in intervals.items():
        windows = open_bars.get(label, {})
        for key in sorted(
            (k for k in windows if int(k) + width + grace_ns <= stream_time), key=int
        ):
            by_provider = windows.pop(key)
            source = min(by_provider, key=rank)
            agg = by_provider[source]
            start = int(key)
            final.append(
                FinalBar(
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
                    providers_present=tuple(sorted(by_provider, key=rank)),
                )
            )
    return final


def earliest_close(open_bars: OpenBars, intervals: Mapping[str, int], grace_ns: int) -> int | None:
    """The stream time at which the next open window becomes final (None when nothing is open)."""
    due = [
        int(k) + width + grace_ns
        for label, width in intervals.items()
        for k in open_bars.get(label, {})
    ]
    return min(due) if due else None


def is_late(ts: np.ndarray, finest_ns: int, stream_time: int, grace_ns: int) -> np.ndarray:
    """Ticks whose finest window is already final: they can no longer change any bar."""
    return (ts - ts % finest_ns) + finest_ns + grace_ns <= stream_time
