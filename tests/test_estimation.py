"""Estimated prices under total data loss: calibrated bands, robust to bad prints, and measured
on real SPY trades against the naive carry-forward."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.estimation import DAYS, measure, pooled
from mdstream.core.estimation import (
    SECOND_NS,
    EstimationConfig,
    estimate,
    volatility_per_sqrt_second,
)
from tests.shared_data import shared_path

T0 = 1_700_000_000 * SECOND_NS


def random_walk(sigma_per_sqrt_s: float, seconds: int = 3600, seed: int = 3):
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(seconds, dtype=np.int64) * SECOND_NS
    prices = 100 * np.exp(np.cumsum(rng.normal(0, sigma_per_sqrt_s, seconds)))
    return ts, prices


def test_volatility_recovers_the_walks_sigma() -> None:
    for sigma in (2e-5, 1e-4):
        ts, prices = random_walk(sigma)
        got, n = volatility_per_sqrt_second(ts, prices)
        assert n in (59, 60) and got == pytest.approx(sigma, rel=0.2)


def test_a_bad_print_barely_moves_the_volatility() -> None:
    ts, prices = random_walk(5e-5)
    clean, _ = volatility_per_sqrt_second(ts, prices)
    spiked = prices.copy()
    spiked[1799] *= 1.05  # a 5 % fat finger, the last print of its minute
    robust, _ = volatility_per_sqrt_second(ts, spiked)
    r = np.diff(np.log(spiked[59::60]))
    plain = math.sqrt(float(np.sum(r**2)) / 3540)
    assert robust < 2 * clean < plain / 2


def test_the_band_widens_with_the_square_root_of_silence() -> None:
    ts, prices = random_walk(5e-5)
    last = int(ts[-1])
    widths = {}
    for silent_s in (10, 40, 160):
        e = estimate(ts, prices, last + silent_s * SECOND_NS)
        assert e is not None and e.low < e.price < e.high
        assert e.price == float(np.median(prices[-5:]))  # the last trades' median
        widths[silent_s] = math.log(e.high / e.price)
    cfg = EstimationConfig()
    for silent_s, half in widths.items():
        expected = cfg.z * 5e-5 * math.sqrt(silent_s + cfg.point_noise_s)
        assert half == pytest.approx(expected, rel=0.25)
    assert widths[40] / widths[10] == pytest.approx(math.sqrt(45 / 15), rel=1e-9)


def test_no_estimate_without_history_or_after_too_long() -> None:
    ts, prices = random_walk(5e-5)
    assert estimate(ts, prices, int(ts[0])) is None  # nothing before it
    assert estimate(ts[:600], prices[:600], int(ts[599]) + SECOND_NS) is None  # 9 returns only
    cfg = EstimationConfig()
    assert estimate(ts, prices, int(ts[-1]) + cfg.max_horizon_ns + 1) is None
    assert estimate(ts, prices, int(ts[-1]) + cfg.max_horizon_ns) is not None


@pytest.mark.realdata
def test_on_real_spy_trades_the_band_holds_the_truth_95_percent_of_the_time() -> None:
    root = shared_path("lean", "equity", "usa", "tick", "spy", "20131007_trade.zip").parents[5]
    result = pooled(measure(root, gaps=100))
    assert result["gaps"].to_list() == [100 * len(DAYS)] * 4
    for row in result.iter_rows(named=True):
        assert 0.90 <= row["band_coverage"] <= 0.98, row
        # the point is no worse than carrying the last print (bounce-free, same information)
        assert row["mae_bp_estimate"] <= 1.05 * row["mae_bp_naive"], row
    widths = result["band_half_width_bp"].to_list()
    assert widths == sorted(widths)
