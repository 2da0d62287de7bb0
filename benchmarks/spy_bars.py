"""Our SPY bars against the vendor's (Lean/AlgoSeek), 2013-10-07..11: match rates, with and
without the vendor-like trade filter, plus roll-up and session-daily checks. Prints a table.

    python -m benchmarks.spy_bars

Reads ../shared/data/lean in place (see CATALOG.md); nothing is copied.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import zipfile
from pathlib import Path

import polars as pl

from mdstream.core.bars import roll_up, session_bars, trade_bars, vendor_like_eligibility
from mdstream.core.instruments import regular_sessions
from mdstream.core.normalise import LEAN_TICKS, Convention, normalise

NEW_YORK = "America/New_York"
DAYS = tuple(dt.date(2013, 10, d) for d in range(7, 12))
TICK_COLUMNS = ["ts", "price", "size", "exchange", "conditions", "suspicious"]
BAR_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
LEAN_BARS = Convention(
    price_columns=("open", "high", "low", "close"),
    time="since_midnight",
    time_unit="ms",
    price_divisor=10_000,
    size_column="volume",
)
FIELDS = ("open", "high", "low", "close", "volume")


def lean_root() -> Path:
    shared = Path(
        os.environ.get("MDSTREAM_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data")
    )
    return shared / "lean" / "equity" / "usa"


def _csv(path: Path, columns: list[str]) -> pl.DataFrame:
    with zipfile.ZipFile(path) as z:
        data = z.read(z.namelist()[0])
    return pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        new_columns=columns,
        schema_overrides={"conditions": pl.String} if "conditions" in columns else None,
    )


def ticks(day: dt.date, root: Path | None = None) -> pl.DataFrame:
    """One day's trades: ts (ns UTC), price, size, conditions (bit flags), suspicious,
    `eligible` (the vendor-like filter)."""
    raw = _csv((root or lean_root()) / "tick" / "spy" / f"{day:%Y%m%d}_trade.zip", TICK_COLUMNS)
    out = normalise(raw, LEAN_TICKS, tz=NEW_YORK, day=day)
    out = out.with_columns(pl.col("conditions").str.to_integer(base=16))
    return out.with_columns(
        eligible=vendor_like_eligibility(pl.col("conditions"), pl.col("suspicious"))
    )


def vendor_bars(kind: str, day: dt.date, root: Path | None = None) -> pl.DataFrame:
    """The vendor's trade bars (`kind` minute or second), normalised like ours."""
    raw = _csv((root or lean_root()) / kind / "spy" / f"{day:%Y%m%d}_trade.zip", BAR_COLUMNS)
    bars = normalise(raw, LEAN_BARS, tz=NEW_YORK, day=day)
    return bars.rename({"size": "volume"}).select("ts", *FIELDS)


def vendor_daily(root: Path | None = None) -> pl.DataFrame:
    raw = _csv((root or lean_root()) / "daily" / "spy.zip", ["date", *FIELDS])
    return raw.select(
        pl.col("date").str.slice(0, 8).str.to_date("%Y%m%d").alias("date"),
        *(pl.col(c) / 10_000 for c in ("open", "high", "low", "close")),
        pl.col("volume"),
    )


def match_rates(ours: pl.DataFrame, vendor: pl.DataFrame) -> dict[str, float]:
    """Share of the vendor's bars that we reproduce exactly, per field and all at once."""
    joined = vendor.join(ours.select("ts", *FIELDS), on="ts", how="left", suffix="_ours")
    equal = {f: (joined[f] == joined[f"{f}_ours"]).fill_null(False) for f in FIELDS}
    rates = {f: float(e.mean()) for f, e in equal.items()}
    every = equal["open"] & equal["high"] & equal["low"] & equal["close"] & equal["volume"]
    rates["all"] = float(every.mean())
    rates["vendor_bars"] = vendor.height
    rates["our_bars"] = ours.height
    return rates


def compare(kind: str, filtered: bool, root: Path | None = None) -> dict[str, float]:
    interval = {"minute": "1m", "second": "1s"}[kind]
    ours, vendor = [], []
    for day in DAYS:
        tape = ticks(day, root)
        ours.append(trade_bars(tape, interval, eligible="eligible" if filtered else None))
        vendor.append(vendor_bars(kind, day, root))
    return match_rates(pl.concat(ours), pl.concat(vendor))


def roll_up_check(root: Path | None = None) -> dict[str, bool]:
    """minute → hour → day equals direct hourly/daily aggregation (exact fields), on SPY."""
    tape = pl.concat([ticks(day, root) for day in DAYS])
    exact = ["ts", "open", "high", "low", "close", "volume", "trade_count"]
    minute = trade_bars(tape, "1m")
    hour = roll_up(minute, "1h")
    same_hour = hour.select(exact).equals(trade_bars(tape, "1h").select(exact))
    opens, closes, labels = regular_sessions("ARCX", str(DAYS[0]), str(DAYS[-1]))
    daily = session_bars(tape, opens, closes, labels)
    from_minutes = []
    for o, c in zip(opens, closes, strict=True):
        m = minute.filter((pl.col("ts") >= o) & (pl.col("ts") < c))
        from_minutes.append(
            (m["open"][0], m["high"].max(), m["low"].min(), m["close"][-1],
             m["volume"].sum(), m["trade_count"].sum())
        )  # fmt: skip
    direct = daily.select(exact[1:]).rows()
    return {
        "minute→hour = direct hour": same_hour,
        "regular-session minutes→day = session-daily bar": from_minutes == direct,
    }


def daily_vs_vendor(filtered: bool, root: Path | None = None) -> pl.DataFrame:
    tape = pl.concat([ticks(day, root) for day in DAYS])
    opens, closes, labels = regular_sessions("ARCX", str(DAYS[0]), str(DAYS[-1]))
    ours = session_bars(tape, opens, closes, labels, eligible="eligible" if filtered else None)
    vendor = vendor_daily(root).filter(pl.col("date").is_between(DAYS[0], DAYS[-1]))
    return vendor.with_columns(session=pl.col("date").cast(pl.String)).join(
        ours.select("session", *FIELDS), on="session", suffix="_ours"
    )


def main() -> None:
    print("SPY 2013-10-07..11: share of the vendor's bars we reproduce exactly")
    print(
        f"{'bars':<8}{'filter':<14}{'vendor':>8}{'ours':>8}"
        + "".join(f"{f:>8}" for f in (*FIELDS, "all"))
    )
    for kind in ("minute", "second"):
        for filtered in (False, True):
            r = compare(kind, filtered)
            name = "vendor-like" if filtered else "none"
            print(
                f"{kind:<8}{name:<14}{r['vendor_bars']:>8}{r['our_bars']:>8}"
                + "".join(f"{r[f]:>8.2%}" for f in (*FIELDS, "all"))
            )
    for name, ok in roll_up_check().items():
        print(f"{name}: {'yes' if ok else 'NO'}")
    for filtered in (False, True):
        d = daily_vs_vendor(filtered)
        same = {f: int((d[f] == d[f"{f}_ours"]).sum()) for f in FIELDS}
        print(
            f"session-daily vs vendor daily ({'vendor-like' if filtered else 'no'} filter): "
            + ", ".join(f"{f} {n}/{d.height}" for f, n in same.items())
        )


if __name__ == "__main__":
    main()
