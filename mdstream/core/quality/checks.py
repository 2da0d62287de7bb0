"""The semantic, cross-source, temporal and statistical checks: vectorised, one value per tick.

A check never rejects a tick by itself (hard rejections are `mdstream.core.validation`); it
returns a mask, and `mdstream.core.quality.assess` decides what a flag means (out of bars, an
alert, a lower score). Flags travel as bits of `Check`, so lineage can name the checks a tick
passed.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from enum import IntFlag

import numpy as np


class Check(IntFlag):
    # level 2, semantic
    LOCKED_QUOTE = 1 << 0
    WIDE_SPREAD = 1 << 1
    NON_REGULAR = 1 << 2
    # level 3, cross-source
    CROSS_SOURCE_OUTLIER = 1 << 3
    # level 4, temporal
    OUT_OF_ORDER = 1 << 4
    DUPLICATE = 1 << 5
    SEQUENCE_GAP = 1 << 6
    OUTSIDE_SESSION = 1 << 7
    # level 5, statistical
    STATISTICAL_OUTLIER = 1 << 8
    MODEL_ANOMALY = 1 << 9
    # an outlier accepted as the feed's new level (see assess._level_shifts)
    LEVEL_SHIFT = 1 << 10


#: Flags that keep a trade out of bars, consensus and the price history.
EXCLUDING = Check.NON_REGULAR | Check.CROSS_SOURCE_OUTLIER | Check.DUPLICATE
EXCLUDING |= Check.STATISTICAL_OUTLIER


def names(flags: int) -> list[str]:
    """The names of the checks set in `flags`, in bit order."""
    return [c.name for c in Check if flags & c and c.name]


_SPLIT = re.compile(r"[\s,;|]+")


def non_regular(conditions: Sequence[str | None], codes: Iterable[str]) -> np.ndarray:
    """Ticks whose condition list (comma/space separated) holds a non-regular-trade code."""
    codes = frozenset(codes)
    return np.fromiter(
        (bool(c) and not codes.isdisjoint(_SPLIT.split(c.strip())) for c in conditions),
        dtype=bool,
        count=len(conditions),
    )


def locked(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Bid equal to ask: a locked market (legal, but no spread to trade against)."""
    return bid == ask


def wide_spread(spread: np.ndarray, typical: float | None, factor: float) -> np.ndarray:
    """Spreads beyond `factor` × the day's typical (median) spread; nothing without a median."""
    if typical is None or typical <= 0:
        return np.zeros(len(spread), dtype=bool)
    with np.errstate(invalid="ignore"):
        return spread > factor * typical


def out_of_order(ts: np.ndarray, last_ts: int) -> np.ndarray:
    """Event time before a tick the same feed sent earlier (in this batch or before it)."""
    if not len(ts):
        return np.zeros(0, dtype=bool)
    before = np.maximum.accumulate(np.concatenate(([last_ts], ts[:-1])))
    return ts < before


def sequences(seq: np.ndarray, last_seq: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Provider sequence numbers (NaN: none). Returns (duplicate or replayed, gap before, missing).

    A number at or below the highest one seen is a duplicate or replay; a jump of more than one
    is a gap of that many missing messages.
    """
    has = np.isfinite(seq)
    if not has.any():
        return np.zeros(len(seq), dtype=bool), np.zeros(len(seq), dtype=bool), 0
    start = -np.inf if last_seq is None else float(last_seq)
    filled = np.where(has, seq, -np.inf)
    before = np.maximum.accumulate(np.concatenate(([start], filled[:-1])))
    dup = has & (seq <= before)
    gap = has & np.isfinite(before) & (seq > before + 1)
    missing = int(np.sum(np.where(gap, seq - before - 1, 0)))
    return dup, gap, missing


def median_mad(history: Sequence[float], floor_rel: float) -> tuple[float, float]:
    """Median of the history and its median absolute deviation, floored at `floor_rel` × median.

    Plain Python: fifty floats sort faster than numpy dispatches. The floor matters: prices on a
    one-cent grid often have a MAD of zero.
    """
    med = statistics.median(history)
    mad = statistics.median([abs(x - med) for x in history])
    return med, max(mad, floor_rel * abs(med))


def mad_outliers(
    history: Sequence[float],
    prices: np.ndarray,
    *,
    k: float,
    floor_rel: float,
    min_history: int,
) -> tuple[np.ndarray, float, float]:
    """Robust outliers (Barndorff-Nielsen et al. 2009): |p - median| > k × MAD of the trailing
    accepted prices. Trailing, since a stream cannot look ahead; one reference per batch
    (batches span milliseconds). Returns (mask, median, MAD); no judgement (all False, NaN)
    with fewer than `min_history` prices.
    """
    if len(history) < min_history or not len(prices):
        return np.zeros(len(prices), dtype=bool), math.nan, math.nan
    med, mad = median_mad(history, floor_rel)
    return np.abs(prices - med) > k * mad, med, mad


def relative_deviation(values: np.ndarray, reference: float | None) -> np.ndarray:
    """|value - reference| / reference; NaN where there is no reference."""
    if reference is None or not reference > 0:
        return np.full(len(values), np.nan)
    return np.abs(values - reference) / reference
