"""Estimated prices when every provider of an instrument is silent: the spec's last step of
graceful degradation ("complete data loss: historical pattern-based estimation").

An estimate is never a bar and never a trade: it is the last efficient price (a median of the
last trades, which takes out the bid-ask bounce a single last print carries) with a band that
widens with the square root of the time since, scaled by the instrument's own recent volatility.
The volatility is robust (bipower variation of one-minute returns, per √second), so a bad print
in the history does not blow up the band. Pure: arrays in, an estimate out.

`evaluate_gaps` measures it on real ticks: blank out intervals, estimate at their end, compare
with the trade that really happened then, beside the naive carry-forward of the last print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

SECOND_NS = 1_000_000_000


@dataclass(frozen=True)
class EstimationConfig:
    lookback_ns: int = 60 * 60 * SECOND_NS  # history the volatility is measured on
    grid_ns: int = 60 * SECOND_NS  # returns between last prices on this grid
    last_trades: int = 5  # the point estimate: median of this many last trades
    z: float = 1.96  # band half-width in standard deviations (95 %)
    point_noise_s: float = 5.0  # the point estimate's own error, in seconds of volatility
    min_returns: int = 20  # fewer returns than this in the lookback: no estimate
    max_horizon_ns: int = 30 * 60 * SECOND_NS  # silent longer than this: no estimate


@dataclass(frozen=True, slots=True)
class PriceEstimate:
    ts_ns: int  # the time the estimate is for
    price: float
    low: float
    high: float
    sigma_per_sqrt_s: float  # log-price volatility per √second, from the lookback
    age_ns: int  # time since the last real trade
    returns: int  # how many returns the volatility rests on


def volatility_per_sqrt_second(
    ts_ns: np.ndarray, prices: np.ndarray, grid_ns: int = 60 * SECOND_NS
) -> tuple[float, int]:
    """Jump-robust log-price volatility per √second: the last price in each grid cell, log
    returns between consecutive occupied cells, and their bipower variation
    (π/2 · Σ|rᵢ||rᵢ₋₁|, Barndorff-Nielsen & Shephard) over the time they span. A single bad
    print moves two products, not a square; on a one-minute grid the tick size and the bid-ask
    bounce, which make most one-second returns exactly zero, no longer dominate."""
    if len(ts_ns) < 3:
        return math.nan, 0
    cells = ts_ns // grid_ns
    last_in_cell = np.flatnonzero(np.diff(cells, append=cells[-1] + 1))
    lp = np.log(prices[last_in_cell])
    if len(lp) < 4:
        return math.nan, 0
    r = np.abs(np.diff(lp))
    span_s = float(cells[last_in_cell[-1]] - cells[last_in_cell[0]]) * grid_ns / SECOND_NS
    bipower = (math.pi / 2) * float(np.sum(r[1:] * r[:-1])) * len(r) / (len(r) - 1)
    return math.sqrt(bipower / span_s), len(r)


def estimate(
    ts_ns: np.ndarray,
    prices: np.ndarray,
    at_ns: int,
    cfg: EstimationConfig = EstimationConfig(),
    *,
    known_until_ns: int | None = None,
) -> PriceEstimate | None:
    """The estimate for `at_ns` from the trades (sorted by time) before `known_until_ns` (default
    `at_ns`), or None when the history is too thin or the silence too long to mean anything."""
    known = at_ns if known_until_ns is None else known_until_ns
    end = int(np.searchsorted(ts_ns, known, side="left"))
    start = int(np.searchsorted(ts_ns, known - cfg.lookback_ns, side="left"))
    if end == 0:
        return None
    age = at_ns - int(ts_ns[end - 1])
    if age > cfg.max_horizon_ns:
        return None
    sigma, n = volatility_per_sqrt_second(ts_ns[start:end], prices[start:end], cfg.grid_ns)
    if n < cfg.min_returns or not math.isfinite(sigma):
        return None
    point = float(np.median(prices[max(0, end - cfg.last_trades) : end]))
    # The point's own error (bounce, the median's lag) counts as a few seconds of time.
    half = cfg.z * sigma * math.sqrt(age / SECOND_NS + cfg.point_noise_s)
    return PriceEstimate(
        ts_ns=at_ns,
        price=point,
        low=point * math.exp(-half),
        high=point * math.exp(half),
        sigma_per_sqrt_s=sigma,
        age_ns=age,
        returns=n,
    )


def evaluate_gaps(
    ticks: pl.DataFrame,
    gap_seconds: tuple[int, ...] = (10, 60, 300, 900),
    gaps_per_length: int = 200,
    *,
    session: tuple[int, int] | None = None,
    seed: int = 1,
    cfg: EstimationConfig = EstimationConfig(),
) -> pl.DataFrame:
    """Blank out random intervals of a day of trades (`ts`, `price`; suspicious prints already
    removed) and compare, at each interval's end, the estimate from the trades before it with the
    last trade that really happened by then. One row per gap length: mean absolute errors in
    basis points of the estimate and of the naive carry-forward (the last print), the share of
    true prices inside the band, and the band's mean half-width.

    `session`: (start_ns, end_ns) the gaps must lie in (e.g. the regular session)."""
    ticks = ticks.sort("ts")
    ts = ticks.get_column("ts").to_numpy()
    px = ticks.get_column("price").to_numpy().astype(np.float64)
    lo, hi = session if session is not None else (int(ts[0]), int(ts[-1]))
    rng = np.random.default_rng(seed)
    rows = []
    for seconds in gap_seconds:
        width = seconds * SECOND_NS
        starts = rng.integers(lo + cfg.lookback_ns, hi - width, size=gaps_per_length)
        est_err, naive_err, inside, half_bp = [], [], [], []
        for start in starts:
            at = int(start) + width
            truth_i = int(np.searchsorted(ts, at, side="right")) - 1
            if truth_i < 0 or ts[truth_i] <= start:
                continue  # nothing traded in the gap: the truth is the pre-gap price
            # made from what was known when the feeds fell silent, for the end of the silence
            e = estimate(ts, px, at, cfg, known_until_ns=int(start))
            if e is None:
                continue
            naive = px[int(np.searchsorted(ts, start, side="left")) - 1]
            truth = px[truth_i]
            est_err.append(abs(e.price / truth - 1) * 1e4)
            naive_err.append(abs(naive / truth - 1) * 1e4)
            inside.append(e.low <= truth <= e.high)
            half_bp.append((e.high / e.price - 1) * 1e4)
        rows.append(
            {
                "gap_s": seconds,
                "gaps": len(est_err),
                "mae_bp_estimate": float(np.mean(est_err)) if est_err else math.nan,
                "mae_bp_naive": float(np.mean(naive_err)) if naive_err else math.nan,
                "band_coverage": float(np.mean(inside)) if inside else math.nan,
                "band_half_width_bp": float(np.mean(half_bp)) if half_bp else math.nan,
            }
        )
    return pl.DataFrame(rows)
