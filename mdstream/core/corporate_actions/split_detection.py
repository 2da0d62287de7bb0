"""Split-like jumps in daily closes: suspected corporate actions for a person to confirm."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from fractions import Fraction

import numpy as np
import polars as pl

#: Large split terms beyond N, M ≤ 10 (checked both as 1:N reverse and N:1 forward).
LARGE_SPLIT_TERMS: tuple[int, ...] = (12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 250, 500, 1000)


def simple_ratios(
    max_term: int = 10, large_terms: Iterable[int] = LARGE_SPLIT_TERMS
) -> list[tuple[int, int]]:
    """Split terms (new, old) in lowest terms: every N:M with N, M ≤ max_term, N ≠ M, plus
    N:1 and 1:N for each large term."""
    terms = {
        (f.numerator, f.denominator)
        for n in range(1, max_term + 1)
        for m in range(1, max_term + 1)
        if n != m
        for f in (Fraction(n, m),)
    }
    for n in large_terms:
        terms.update({(n, 1), (1, n)})
    return sorted(terms, key=lambda t: t[0] / t[1])


def nearest_simple_ratio(
    value: float,
    *,
    tolerance: float,
    max_term: int = 10,
    large_terms: Iterable[int] = LARGE_SPLIT_TERMS,
) -> tuple[int, int] | None:
    """The split terms (new, old) whose ratio is nearest ``value`` in log space, if within
    ``tolerance`` (relative); used to snap vendor ratios like 1.999996 back to 2:1."""
    if not (value > 0 and math.isfinite(value)):
        return None
    best = min(
        simple_ratios(max_term, large_terms), key=lambda t: abs(math.log(value * t[1] / t[0]))
    )
    if abs(value * best[1] / best[0] - 1.0) > tolerance:
        return None
    return best


@dataclass(frozen=True, slots=True)
class SplitSuspicion:
    """A day that looks like an unannounced split.

    Never applied: a human or a second source decides.
    """

    date: date
    previous_date: date
    price_ratio: float  # previous close / (close or open) ≈ new/old shares for a split
    compared_to: str  # "close" or "open": which of the day's prices matched best
    new_shares: int
    old_shares: int
    ratio_error: float  # price_ratio / (new/old) - 1
    volume_ratio: float  # volume / median volume of the previous sessions
    reason: str


def detect_split_like_jumps(
    bars: pl.DataFrame,
    *,
    tolerance: float = 0.03,
    min_jump: float = 1.25,
    volume_lookback: int = 5,
    volume_share: float = 0.5,
    max_term: int = 10,
    large_terms: Iterable[int] = LARGE_SPLIT_TERMS,
) -> list[SplitSuspicion]:
    """Flag days whose price jump matches a simple split ratio *and* whose volume jumps with it.

    ``bars``: one instrument's consecutive daily bars with ``date``, ``close``, ``volume`` and
    optionally ``open``. A day is suspicious when ``prev_close / close`` (or ``prev_close / open``:
    a split happens at the open, so the overnight gap is not blurred by the day's own move; AAPL
    rose 10% on its 2000-06-21 split day) is within ``tolerance`` (relative) of N/M for the
    candidate terms (:func:`simple_ratios`) whose jump max(r, 1/r) is at least ``min_jump``
    (ratios such as 10:9 are ordinary daily moves), and the share volume moved the same way by
    at least ``volume_share`` of the ratio in log terms (a split multiplies the share count, so
    volume / median(previous ``volume_lookback`` volumes) ≈ r; a crash moves the price without
    the matching volume). Nothing is applied: these are suspicions.
    """
    missing = {"date", "close", "volume"} - set(bars.columns)
    if missing:
        raise ValueError(f"bars lack column(s) {sorted(missing)}")
    has_open = "open" in bars.columns
    frame = (
        bars.select(
            pl.col("date").cast(pl.Date),
            pl.col("close").cast(pl.Float64),
            (pl.col("open") if has_open else pl.col("close")).cast(pl.Float64).alias("open"),
            pl.col("volume").cast(pl.Float64),
        )
        .sort("date")
        .with_columns(
            previous_date=pl.col("date").shift(1),
            close_ratio=pl.col("close").shift(1) / pl.col("close"),
            open_ratio=pl.col("close").shift(1) / pl.col("open"),
            volume_ratio=pl.col("volume")
            / pl.col("volume").shift(1).rolling_median(volume_lookback, min_samples=1),
        )
        .filter(
            pl.col("close_ratio").is_finite()
            & (pl.col("close_ratio") > 0)
            & pl.col("open_ratio").is_finite()
            & (pl.col("open_ratio") > 0)
            & pl.col("volume_ratio").is_finite()
            & (pl.col("volume_ratio") > 0)
        )
    )
    candidates = [
        t for t in simple_ratios(max_term, large_terms) if max(t[0] / t[1], t[1] / t[0]) >= min_jump
    ]
    if frame.height == 0 or not candidates:
        return []
    log_candidates = np.log(np.array([n / m for n, m in candidates]))

    def nearest(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distance = np.abs(np.log(ratio)[:, None] - log_candidates[None, :])
        index = distance.argmin(axis=1)
        return index, distance[np.arange(ratio.size), index]

    close_ratio = frame.get_column("close_ratio").to_numpy()
    open_ratio = frame.get_column("open_ratio").to_numpy()
    close_idx, close_dist = nearest(close_ratio)
    open_idx, open_dist = nearest(open_ratio)
    use_open = open_dist < close_dist
    index = np.where(use_open, open_idx, close_idx)
    price_ratio = np.where(use_open, open_ratio, close_ratio)
    log_r = log_candidates[index]
    ratio_error = price_ratio / np.exp(log_r) - 1.0
    volume_ratio = frame.get_column("volume_ratio").to_numpy()
    log_volume = np.log(volume_ratio)
    volume_ok = (np.sign(log_volume) == np.sign(log_r)) & (
        np.abs(log_volume) >= volume_share * np.abs(log_r)
    )
    hits = np.flatnonzero((np.abs(ratio_error) <= tolerance) & volume_ok)
    dates = frame.get_column("date").to_list()
    previous = frame.get_column("previous_date").to_list()
    out: list[SplitSuspicion] = []
    for k in hits:
        new, old = candidates[int(index[k])]
        against = "open" if use_open[k] else "close"
        out.append(
            SplitSuspicion(
                date=dates[k],
                previous_date=previous[k],
                price_ratio=float(price_ratio[k]),
                compared_to=against,
                new_shares=new,
                old_shares=old,
                ratio_error=float(ratio_error[k]),
                volume_ratio=float(volume_ratio[k]),
                reason=(
                    f"previous close / {against} = {price_ratio[k]:.4f} vs a {new}:{old} split "
                    f"(off by {ratio_error[k]:+.2%}) with volume {volume_ratio[k]:.2f}x "
                    "its recent median"
                ),
            )
        )
    return out
