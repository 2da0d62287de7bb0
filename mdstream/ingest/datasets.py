"""Readers for the public market-data file formats used to validate the engine (Lean, Quandl WIKI,
Yahoo), and converters from their event columns to :class:`CorporateAction` lists.

Readers take a path and return polars frames; nothing here knows where the files live (tests pass
paths under ``../shared/data``, see its CATALOG.md). Prices come back in currency units as Float64.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from mdstream.core.corporate_actions import ActionKind, CorporateAction, nearest_simple_ratio

__all__ = [
    "LEAN_PRICE_SCALE",
    "lean_factor_file_events",
    "quandl_events",
    "read_lean_daily",
    "read_lean_factor_file",
    "read_lean_trade_ticks",
    "read_quandl_archive",
    "read_yahoo_csv",
    "round_dividend",
]

#: Lean equity prices are integers scaled by 10,000 (1674100 = $167.41).
LEAN_PRICE_SCALE = 10_000


def _single_member_bytes(path: Path) -> bytes:
    """The bytes of a plain file, or of the only CSV inside a zip archive."""
    path = Path(path)
    if path.suffix.lower() != ".zip":
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        members = [n for n in archive.namelist() if not n.endswith("/")]
        if len(members) != 1:
            raise ValueError(f"{path}: expected one file in the archive, found {members}")
        return archive.read(members[0])


def read_lean_daily(path: Path) -> pl.DataFrame:
    """Lean daily trade bars (``YYYYMMDD 00:00,open,high,low,close,volume``, prices * 10,000).

    Returns ``date`` (Date), ``open``/``high``/``low``/``close`` (Float64, currency units) and
    ``volume`` (Int64). The scaling divides in numpy, which rounds correctly (4638400 → 463.84
    exactly as parsed from text); polars turns a division by a literal into a multiplication by
    its reciprocal, which is off by one ulp on some prices.
    """
    raw = pl.read_csv(
        io.BytesIO(_single_member_bytes(path)),
        has_header=False,
        new_columns=["time", "open", "high", "low", "close", "volume"],
        schema_overrides={
            "time": pl.String,
            "open": pl.Int64,
            "high": pl.Int64,
            "low": pl.Int64,
            "close": pl.Int64,
            "volume": pl.Int64,
        },
    )
    scaled = {
        c: pl.Series(c, raw.get_column(c).to_numpy().astype(np.float64) / float(LEAN_PRICE_SCALE))
        for c in ("open", "high", "low", "close")
    }
    return pl.DataFrame(
        [
            raw.get_column("time").str.slice(0, 8).str.to_date("%Y%m%d").alias("date"),
            *scaled.values(),
            raw.get_column("volume"),
        ]
    ).sort("date")


def read_lean_factor_file(path: Path) -> pl.DataFrame:
    """Lean factor file rows (no header): ``date,price_factor,split_factor,reference_price``.

    A row's factors apply to dates up to and including its date (and after the previous row's);
    its date is the last session before an ex-date and ``reference_price`` that day's raw close.
    The first row (reference 1) and the ``20501231,1,1,0`` row are sentinels (CATALOG.md).
    """
    return pl.read_csv(
        io.BytesIO(_single_member_bytes(path)),
        has_header=False,
        new_columns=["date", "price_factor", "split_factor", "reference_price"],
        schema_overrides={
            "date": pl.String,
            "price_factor": pl.Float64,
            "split_factor": pl.Float64,
            "reference_price": pl.Float64,
        },
    ).with_columns(pl.col("date").str.to_date("%Y%m%d"))


def read_quandl_archive(path: Path, tickers: Sequence[str] | None = None) -> pl.DataFrame:
    """Quandl WIKI prices (``ticker,date,open,...,ex-dividend,split_ratio,adj_open,...``).

    ``ex-dividend`` is renamed ``ex_dividend``; ``date`` is parsed; optionally filtered to tickers.
    """
    frame = pl.read_csv(io.BytesIO(_single_member_bytes(path))).rename(
        {"ex-dividend": "ex_dividend"}
    )
    frame = frame.with_columns(pl.col("date").str.to_date("%Y-%m-%d"))
    if tickers is not None:
        frame = frame.filter(pl.col("ticker").is_in(list(tickers)))
    return frame.sort("ticker", "date")


def read_yahoo_csv(path: Path) -> pl.DataFrame:
    """Yahoo daily bars (``day,open,high,low,close,volume``) as ``date`` + OHLCV."""
    frame = pl.read_csv(io.BytesIO(_single_member_bytes(path)))
    return (
        frame.rename({"day": "date"})
        .with_columns(
            pl.col("date").str.to_date("%Y-%m-%d"),
            pl.col("open", "high", "low", "close").cast(pl.Float64),
            pl.col("volume").cast(pl.Int64),
        )
        .sort("date")
    )


def round_dividend(
    value: float, resolution: float, grids: Sequence[float] = (0.01, 0.005)
) -> float:
    """Snap a dividend recovered from rounded factors to the coarsest declared-amount grid that is
    consistent with it (within ``resolution``, the largest error the factor rounding can cause);
    keep it unrounded when no grid fits (e.g. SPY's distributions have six decimals)."""
    for grid in grids:
        snapped = round(value / grid) * grid
        if abs(snapped - value) <= resolution:
            return round(snapped, 10)
    return value


def lean_factor_file_events(
    factor_file: pl.DataFrame,
    sessions: Sequence[date] | pl.Series,
    *,
    instrument_id: str,
    symbol: str,
    currency: str = "USD",
    factor_decimals: int = 7,
    dividend_grids: Sequence[float] = (0.01, 0.005),
    source: str = "lean-factor-file",
) -> list[CorporateAction]:
    """The events a Lean factor file encodes: only (ex-date, dividend amount or split ratio).

    Between consecutive rows i, i+1: a dividend ``D = ref_i * (1 - pf_i/pf_{i+1})`` when the price
    factor changes, a split ``sf_{i+1}/sf_i`` when the split factor changes; the ex-date is the
    first session in ``sessions`` after row i's date (the next weekday if the sessions end first).

    Rounding. The file prints price factors with ``factor_decimals`` (7) decimals, so a recovered
    D is off by up to ``ref * 5e-8 * (1/pf_{i+1} + pf_i/pf_{i+1}²)`` (≈ 7e-5 for AAPL at $600:
    2.649939 for the real $2.65). Rounding is *not* needed to reproduce the factors to 1e-6: with
    close = ref, ``1 - D/close`` gives back ``pf_i/pf_{i+1}`` exactly and the product telescopes.
    It is done to recover the declared amounts (what a real dividend feed carries): a value is
    snapped to the cent (or half cent: AAPL paid $0.205 in 2020-21) only when that grid is within
    the error bound, and left alone otherwise (SPY's distributions have 6 decimals, e.g.
    1.435404; rounding those to the cent would move the factor by up to ~3e-5 and break 1e-6).
    Split ratios are printed with 6 significant digits (1.999996 for 2:1) and snapped to the
    nearest simple N:M within 1e-4. The first row (reference price 1) is a start sentinel.
    """
    rows = factor_file.sort("date").rows(named=True)
    session_list = sorted(sessions.to_list() if isinstance(sessions, pl.Series) else sessions)
    session_series = pl.Series(session_list, dtype=pl.Date)
    half_unit = 0.5 * 10.0 ** (-factor_decimals)
    events: list[CorporateAction] = []
    for i in range(len(rows) - 1):
        row, nxt = rows[i], rows[i + 1]
        if i == 0 and row["reference_price"] == 1:
            continue  # start sentinel: no reference price, its factors copy the next row's
        later = session_series.filter(session_series > row["date"])
        if later.len():
            ex_date = later[0]
        else:
            ex_date = row["date"] + timedelta(days=1)
            while ex_date.weekday() >= 5:
                ex_date += timedelta(days=1)
        pf, pf_next = row["price_factor"], nxt["price_factor"]
        if pf != pf_next:
            ref = row["reference_price"]
            amount = ref * (1.0 - pf / pf_next)
            resolution = ref * half_unit * (1.0 / pf_next + pf / pf_next**2)
            events.append(
                CorporateAction(
                    kind=ActionKind.CASH_DIVIDEND,
                    instrument_id=instrument_id,
                    symbol=symbol,
                    ex_date=ex_date,
                    amount=round_dividend(amount, resolution, dividend_grids),
                    currency=currency,
                    source=source,
                )
            )
        sf, sf_next = row["split_factor"], nxt["split_factor"]
        if sf != sf_next:
            raw_ratio = sf_next / sf
            terms = nearest_simple_ratio(raw_ratio, tolerance=1e-4)
            ratio = terms[0] / terms[1] if terms else raw_ratio
            if math.isclose(ratio, 1.0):
                continue
            events.append(
                CorporateAction(
                    kind=ActionKind.STOCK_SPLIT if ratio > 1 else ActionKind.REVERSE_SPLIT,
                    instrument_id=instrument_id,
                    symbol=symbol,
                    ex_date=ex_date,
                    ratio=ratio,
                    source=source,
                )
            )
    return events


def quandl_events(
    frame: pl.DataFrame, *, instrument_id: str, currency: str = "USD", source: str = "quandl-wiki"
) -> list[CorporateAction]:
    """Events from one ticker's Quandl rows: ``ex_dividend`` > 0 is a cash dividend with that
    ex-date, ``split_ratio`` ≠ 1 a split of that ratio (new/old shares)."""
    tickers = frame.get_column("ticker").unique().to_list()
    if len(tickers) != 1:
        raise ValueError(f"expected one ticker, got {tickers}")
    symbol = tickers[0]
    events: list[CorporateAction] = []
    for row in frame.filter((pl.col("ex_dividend") != 0) | (pl.col("split_ratio") != 1)).iter_rows(
        named=True
    ):
        if row["ex_dividend"]:
            events.append(
                CorporateAction(
                    kind=ActionKind.CASH_DIVIDEND,
                    instrument_id=instrument_id,
                    symbol=symbol,
                    ex_date=row["date"],
                    amount=row["ex_dividend"],
                    currency=currency,
                    source=source,
                )
            )
        if row["split_ratio"] != 1:
            ratio = float(row["split_ratio"])
            events.append(
                CorporateAction(
                    kind=ActionKind.STOCK_SPLIT if ratio > 1 else ActionKind.REVERSE_SPLIT,
                    instrument_id=instrument_id,
                    symbol=symbol,
                    ex_date=row["date"],
                    ratio=ratio,
                    source=source,
                )
            )
    return events


def read_lean_trade_ticks(
    path: Path, day: date, timezone: str = "America/New_York"
) -> pl.DataFrame:
    """Lean/AlgoSeek equity trade ticks of one day
    (``ms_since_midnight,price*10000,size,exchange,sale_condition_hex,suspicious``).

    Returns ``ts`` (Int64 epoch ns UTC; the file's times are exchange-local), ``price`` (Float64,
    currency units), ``size``, ``exchange``, ``condition`` and ``suspicious`` (Boolean: the
    vendor's own flag for a print it doubts).
    """
    from zoneinfo import ZoneInfo

    raw = pl.read_csv(
        io.BytesIO(_single_member_bytes(path)),
        has_header=False,
        new_columns=["ms", "price", "size", "exchange", "condition", "suspicious"],
        schema_overrides={
            "ms": pl.Int64,
            "price": pl.Int64,
            "size": pl.Int64,
            "exchange": pl.String,
            "condition": pl.String,
            "suspicious": pl.Int64,
        },
    )
    midnight = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(timezone))
    base_ns = int(midnight.timestamp()) * 1_000_000_000
    price = raw.get_column("price").to_numpy().astype(np.float64) / float(LEAN_PRICE_SCALE)
    return pl.DataFrame(
        [
            (raw.get_column("ms") * 1_000_000 + base_ns).alias("ts"),
            pl.Series("price", price),
            raw.get_column("size"),
            raw.get_column("exchange"),
            raw.get_column("condition"),
            (raw.get_column("suspicious") == 1).alias("suspicious"),
        ]
    )
