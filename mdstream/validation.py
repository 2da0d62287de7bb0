"""Per-tick syntactic and semantic checks: which ticks of a batch may enter bars, and why not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdstream.batch import TickColumns


@dataclass(frozen=True)
class ValidationRules:
    # A provider clock ahead of ours by more than this is a bad timestamp: left in, one such tick
    # would move stream time forward and close every open window early.
    max_future_ns: int = 5_000_000_000


def validate(cols: TickColumns, rules: ValidationRules) -> list[str | None]:
    """One entry per tick: None when the tick is acceptable, else the reason it is not."""
    reasons: list[str | None] = [None] * len(cols)
    trade, quote = cols.is_trade, ~cols.is_trade
    with np.errstate(invalid="ignore"):
        checks = (
            (cols.ts <= 0, "timestamp missing or before 1970"),
            (cols.ts > cols.published_ns + rules.max_future_ns, "timestamp in the future"),
            (trade & ~np.isfinite(cols.price), "trade price missing or not finite"),
            (trade & (cols.price <= 0), "trade price not positive (sentinel or bad print)"),
            (trade & ~np.isfinite(cols.volume), "trade size missing or not finite"),
            (trade & (cols.volume <= 0), "trade size not positive"),
            (quote & ~(np.isfinite(cols.bid) & np.isfinite(cols.ask)), "quote side missing"),
            (quote & ((cols.bid <= 0) | (cols.ask <= 0)), "quote price not positive"),
            (quote & (cols.bid > cols.ask), "crossed quote (bid above ask)"),
        )
    if not np.logical_or.reduce([mask for mask, _ in checks]).any():
        return reasons
    for mask, reason in checks:
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = reason
    return reasons
