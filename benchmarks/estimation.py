"""Estimation under total data loss, measured on real SPY trades (../shared/data, Lean tick files).

    python -m benchmarks.estimation [--gaps 200]

Per trading day and pooled: random intervals of the regular session are blanked out; at each
interval's end the estimate made when the feeds fell silent is compared with the last trade that
really happened by then, beside the naive carry-forward of the last print.
"""

from __future__ import annotations

import argparse
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from mdstream.core.estimation import evaluate_gaps
from mdstream.ingest.datasets import read_lean_trade_ticks

NY = ZoneInfo("America/New_York")
DAYS = [date(2013, 10, d) for d in range(7, 12)]


def regular_session(day: date) -> tuple[int, int]:
    return tuple(  # type: ignore[return-value]
        int(datetime(day.year, day.month, day.day, h, m, tzinfo=NY).timestamp()) * 10**9
        for h, m in ((9, 30), (16, 0))
    )


def spy_day(root: Path, day: date) -> pl.DataFrame:
    path = root / "lean" / "equity" / "usa" / "tick" / "spy" / f"{day:%Y%m%d}_trade.zip"
    return read_lean_trade_ticks(path, day).filter(~pl.col("suspicious"))


def measure(root: Path, gaps: int) -> pl.DataFrame:
    frames = [
        evaluate_gaps(
            spy_day(root, day), gaps_per_length=gaps, session=regular_session(day), seed=i
        ).with_columns(day=pl.lit(str(day)))
        for i, day in enumerate(DAYS)
    ]
    return pl.concat(frames)


def pooled(per_day: pl.DataFrame) -> pl.DataFrame:
    weight = pl.col("gaps")
    return (
        per_day.group_by("gap_s")
        .agg(
            pl.col("gaps").sum(),
            *(
                ((pl.col(c) * weight).sum() / weight.sum()).alias(c)
                for c in ("mae_bp_estimate", "mae_bp_naive", "band_coverage", "band_half_width_bp")
            ),
        )
        .sort("gap_s")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--gaps", type=int, default=200, help="intervals per length and day")
    args = parser.parse_args()
    per_day = measure(args.data, args.gaps)
    with pl.Config(tbl_rows=50, float_precision=3):
        print(per_day)
        print("pooled over", len(DAYS), "days:")
        print(pooled(per_day))


if __name__ == "__main__":
    main()
