"""Corporate-actions benchmark: vectorised back-adjustment, bar COPY throughput, history reads.

    python -m benchmarks.corporate_actions [--instruments 5000] [--years 10] [--pg-instruments 200]
        [--reads 20] [--skip adjust|postgres]

1. Back-adjustment with the core (no I/O): synthetic daily closes for N instruments over Y years
   of weekdays, ~quarterly cash dividends for 40 % of the names and splits at ~1 % per name and
   year (2:1, 3:2, 3:1, 1:10); times `compute_factors` (events → factor rows, reference closes
   joined) and `adjust` in each mode over every bar at once.
2. PostgreSQL (`mdstream services up`; a scratch schema, dropped at the end): COPY throughput of
   daily bars through `write_bars` (partitions on demand, upsert by revision), the same rows
   again (a replay: nothing changes), and `history` read latency for one instrument's 10 years,
   adjusted, through a pool (`bars_async`) and through the synchronous `history.bars`.

A script that prints numbers, not a test: the machine is shared, figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from mdstream.core.corporate_actions import (
    ActionKind,
    AdjustmentMode,
    CorporateAction,
    adjust,
    compute_factors,
)
from mdstream.storage import history
from mdstream.storage.bars import write_bars
from mdstream.storage.corporate_actions import record_announcements
from mdstream.storage.postgres import create_pool, drop_schema

SPLITS = ((2, 1), (3, 2), (3, 1), (1, 10))


def synthetic(
    instruments: int, years: int, seed: int = 7
) -> tuple[pl.DataFrame, list[CorporateAction]]:
    rng = np.random.default_rng(seed)
    days = pl.date_range(date(2015, 1, 1), date(2015 + years, 1, 1), eager=True)
    days = days.filter(days.dt.weekday() <= 5)
    n = days.len()
    returns = rng.normal(0.0003, 0.02, size=(instruments, n))
    closes = 50.0 * np.exp(np.cumsum(returns, axis=1))
    names = [f"S{i:05d}" for i in range(instruments)]
    bars = pl.DataFrame(
        {
            "instrument_id": np.repeat(np.array(names), n),
            "date": pl.concat([days] * instruments),
            "close": closes.ravel(),
            "open": closes.ravel(),
            "volume": rng.integers(10_000, 1_000_000, size=instruments * n).astype(np.float64),
        }
    )
    day_list = days.to_list()
    actions: list[CorporateAction] = []
    for i, name in enumerate(names):
        if rng.random() < 0.4:  # a dividend payer: one a quarter, ~0.5 % of the price
            for k in range(rng.integers(0, 63), n, 63):
                actions.append(
                    CorporateAction(
                        kind=ActionKind.CASH_DIVIDEND, instrument_id=name, symbol=name,
                        ex_date=day_list[k], amount=round(closes[i, k - 1] * 0.005, 4) or 0.01,
                        currency="USD", source="synthetic",
                    )
                )  # fmt: skip
        for k in np.flatnonzero(rng.random(n) < 0.01 / 252):
            new, old = SPLITS[rng.integers(0, len(SPLITS))]
            actions.append(
                CorporateAction.split(
                    instrument_id=name, symbol=name, ex_date=day_list[k], new=new, old=old,
                    source="synthetic",
                )
            )  # fmt: skip
    return bars, actions


def bench_adjust(instruments: int, years: int) -> None:
    t = time.perf_counter()
    bars, actions = synthetic(instruments, years)
    print(
        f"synthetic: {instruments} instruments x {years} years = {bars.height:,} daily bars, "
        f"{len(actions):,} events ({sum(a.kind is ActionKind.STOCK_SPLIT or a.kind is ActionKind.REVERSE_SPLIT for a in actions)} splits); "  # noqa: E501
        f"generated in {time.perf_counter() - t:.1f}s"
    )
    t = time.perf_counter()
    factors = compute_factors(bars.select("instrument_id", "date", "close"), actions)
    elapsed = time.perf_counter() - t
    applied = sum(d.applied for d in factors.decisions)
    print(
        f"compute_factors: {len(actions):,} events ({applied:,} applied) in {elapsed:.2f}s "
        f"({len(actions) / elapsed:,.0f} events/s)"
    )
    for mode in (
        AdjustmentMode.SPLIT_ADJUSTED,
        AdjustmentMode.ADJUSTED,
        AdjustmentMode.TOTAL_RETURN,
    ):
        t = time.perf_counter()
        out = adjust(bars, factors, mode)
        elapsed = time.perf_counter() - t
        assert out.height == bars.height
        print(
            f"adjust {mode}: {bars.height:,} bars in {elapsed:.2f}s "
            f"({bars.height / elapsed / 1e6:.2f} M rows/s)"
        )


async def bench_postgres(instruments: int, reads: int) -> None:
    bars, actions = synthetic(instruments, 10, seed=11)
    tz = ZoneInfo("America/New_York")
    starts = [
        datetime(d.year, d.month, d.day, tzinfo=tz) for d in bars.get_column("date").to_list()
    ]
    ends = [s + timedelta(days=1) for s in starts]
    rows = [
        (inst, s, e, c, c, c, c, v, None, 0, 0, None, [])
        for inst, s, e, c, v in zip(
            bars.get_column("instrument_id").to_list(),
            starts,
            ends,
            bars.get_column("close").to_list(),
            bars.get_column("volume").to_list(),
            strict=True,
        )
    ]
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    pool = await create_pool(schema=schema, max_size=2)
    try:
        chunk = 50_000
        for label in ("COPY + upsert, new rows", "the same rows again (replay)"):
            t = time.perf_counter()
            changed = 0
            async with pool.acquire() as conn:
                for i in range(0, len(rows), chunk):
                    changed += await write_bars(conn, "1d", rows[i : i + chunk])
            elapsed = time.perf_counter() - t
            print(
                f"postgres {label}: {len(rows):,} daily bars in {elapsed:.2f}s "
                f"({len(rows) / elapsed:,.0f} rows/s, {changed:,} changed)"
            )
        symbol = "S00000"
        mine = [a for a in actions if a.instrument_id == symbol]
        if not mine:  # make sure the read has something to adjust
            first = bars.filter(pl.col("instrument_id") == symbol).get_column("date")[600]
            mine = [CorporateAction.split(instrument_id=symbol, symbol=symbol, ex_date=first,
                                          new=2, old=1, source="synthetic")]  # fmt: skip
        async with pool.acquire() as conn:
            await record_announcements(conn, mine, key_prefix="bench")
        latencies: dict[str, list[float]] = {"raw": [], "adjusted": [], "total_return": []}
        for _ in range(reads):
            for adjustment, samples in latencies.items():
                t = time.perf_counter()
                frame = await history.bars_async(
                    pool,
                    symbol,
                    date(2015, 1, 1),
                    date(2025, 1, 1),
                    "1d",
                    adjustment,  # type: ignore[arg-type]
                )
                samples.append(time.perf_counter() - t)
        for adjustment, samples in latencies.items():
            print(
                f"history.bars_async {adjustment}: {frame.height} bars, p50 "
                f"{statistics.median(samples) * 1e3:.1f} ms, max {max(samples) * 1e3:.1f} ms "
                f"({len(mine)} events)"
            )
        t = time.perf_counter()
        frame = history.bars(
            symbol, date(2015, 1, 1), date(2025, 1, 1), "1d", "adjusted", schema=schema
        )
        print(
            f"history.bars (sync, a new connection each call): {frame.height} bars "
            f"in {(time.perf_counter() - t) * 1e3:.1f} ms"
        )
    finally:
        await pool.close()
        from mdstream.storage.postgres import default_dsn

        await drop_schema(default_dsn(), schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instruments", type=int, default=5000)
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--pg-instruments", type=int, default=200)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--skip", action="append", default=[], choices=["adjust", "postgres"])
    args = parser.parse_args()
    print(f"started {datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z")
    if "adjust" not in args.skip:
        bench_adjust(args.instruments, args.years)
    if "postgres" not in args.skip:
        from mdstream.services import ensure_up

        ensure_up(only=["postgres"])
        asyncio.run(bench_postgres(args.pg_instruments, args.reads))


if __name__ == "__main__":
    main()
