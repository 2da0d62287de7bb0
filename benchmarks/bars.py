"""Tick → bar throughput of the bar core on the 1.89 M real SPY trades (2013-10-07..11).

    python -m benchmarks.bars

Batch core (`trade_bars`, polars) per interval, and the streaming core (`accumulate` +
`close_due`, numpy) fed in batches as the pipeline feeds it. Best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

from benchmarks import spy_bars
from mdstream.core.bars import accumulate, close_due, trade_bars


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stream(ts: np.ndarray, price: np.ndarray, size: np.ndarray, batch: int) -> int:
    """Feed the streaming core batch by batch, closing windows as stream time advances."""
    widths = {"1s": 1_000_000_000, "1m": 60_000_000_000}
    open_bars: dict = {}
    emitted = 0
    for lo in range(0, len(ts), batch):
        chunk = slice(lo, lo + batch)
        accumulate(open_bars, widths, "lean", ts[chunk], price[chunk], size[chunk])
        now = int(ts[chunk][-1])
        emitted += len(close_due(open_bars, widths, now, 1_000_000_000, ["lean"]))
    return emitted + len(close_due(open_bars, widths, int(ts[-1]) + 10**12, 0, ["lean"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load = time.perf_counter()
    tape = pl.concat([spy_bars.ticks(day) for day in spy_bars.DAYS])
    print(f"{tape.height:,} SPY trades loaded and normalised in {time.perf_counter() - load:.1f} s")
    print(f"{'core':<34}{'seconds':>10}{'ticks/s':>14}{'bars':>10}")
    for interval in ("1s", "1m", "1h"):
        bars = trade_bars(tape, interval)
        took = _best(lambda i=interval: trade_bars(tape, i), args.repeat)
        label = f"batch trade_bars {interval}"
        print(f"{label:<34}{took:>10.3f}{tape.height / took:>14,.0f}{bars.height:>10,}")
    took = _best(lambda: trade_bars(tape, "1m", eligible="eligible"), args.repeat)
    print(f"{'batch trade_bars 1m, filtered':<34}{took:>10.3f}{tape.height / took:>14,.0f}")
    ts, price = tape["ts"].to_numpy(), tape["price"].to_numpy()
    size = tape["size"].to_numpy().astype(np.float64)
    for batch in (100, 1000):
        n = stream(ts, price, size, batch)
        took = _best(lambda b=batch: stream(ts, price, size, b), 1)
        label = f"streaming 1s+1m, batches of {batch}"
        print(f"{label:<34}{took:>10.3f}{tape.height / took:>14,.0f}{n:>10,}")


if __name__ == "__main__":
    main()
