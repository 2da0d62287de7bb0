"""The per-tick work every streaming peer does, in plain Python over JSON-able state.

Both peers run this same function inside their framework, so the comparison is of the
frameworks (consume, state store and its changelog, produce, transactions), not of two bar
algorithms. Per instrument (the message key): valid trades (finite price and volume > 0) go
into event-time 1 s and 1 min windows `[start, start + size)` (open and close are the
earliest and latest trade by event time, ties by arrival); every tick, quotes included,
moves the instrument's stream time; a window is final, emitted once and forgotten, when stream
time reaches `end + grace`; a trade for a window already emitted is late and only counted.
"""

from __future__ import annotations

import math
from typing import Any

INTERVALS = (("1s", 1_000_000_000), ("1m", 60_000_000_000))


def new_state() -> dict[str, Any]:
    """Stream time, open windows per interval as [start, open, high, low, close, volume,
    trades, open's time, close's time], and the late-trade count: JSON-able, so any
    framework's store can keep it."""
    return {"time": 0, "open": {name: [] for name, _ in INTERVALS}, "late": 0}


def add_ticks(
    state: dict[str, Any], symbol: str, ticks: list[dict[str, Any]], grace_ns: int
) -> list[dict[str, Any]]:
    """Fold `ticks` into `state` one at a time; returns the bars that became final."""
    bars: list[dict[str, Any]] = []
    windows = state["open"]
    for tick in ticks:
        ts = tick["timestamp"]
        price, volume = tick["price"], tick["volume"]
        if (
            tick["kind"] == "TRADE"
            and price is not None
            and volume is not None
            and math.isfinite(price)
            and math.isfinite(volume)
            and price > 0
            and volume > 0
        ):
            for name, size in INTERVALS:
                start = ts - ts % size
                if start + size + grace_ns <= state["time"]:
                    state["late"] += 1
                    continue
                for w in windows[name]:
                    if w[0] == start:
                        if ts < w[7]:
                            w[1], w[7] = price, ts
                        if ts >= w[8]:
                            w[4], w[8] = price, ts
                        w[2] = max(w[2], price)
                        w[3] = min(w[3], price)
                        w[5] += volume
                        w[6] += 1
                        break
                else:
                    windows[name].append([start, price, price, price, price, volume, 1, ts, ts])
        if ts > state["time"]:
            state["time"] = ts
            for name, size in INTERVALS:
                still_open = []
                for w in windows[name]:
                    if w[0] + size + grace_ns <= ts:
                        bars.append(_bar(symbol, name, size, w))
                    else:
                        still_open.append(w)
                windows[name] = still_open
    return bars


def _bar(symbol: str, name: str, size: int, w: list[Any]) -> dict[str, Any]:
    start, open_, high, low, close, volume, trades = w[:7]
    return {
        "symbol": symbol,
        "interval": name,
        "window_start": start,
        "window_end": start + size,
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "trades": trades,
    }
