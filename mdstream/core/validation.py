"""Per-tick syntactic and semantic rejections: which ticks of a batch may not be used, and why.

These are the hard rules (the tick is wrong, whatever the context): it goes to the dead-letter
topic with the reason. Softer findings that depend on context (locked quotes, wide spreads,
non-regular trade conditions, temporal and statistical checks) are flags, see
`mdstream.core.quality`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdstream.core.batch import TickColumns

#: Values feeds use for "no data": never a real US equity price or size.
DEFAULT_SENTINELS = (999_999.0, 999_999.99, 9_999_999.0, 2_147_483_647.0, 4_294_967_295.0)


@dataclass(frozen=True)
class ValidationRules:
    # A provider clock ahead of ours by more than this is a bad timestamp: left in, one such tick
    # would move stream time forward and close every open window early.
    max_future_ns: int = 5_000_000_000
    # The largest single print we accept (shares); SPY's real block prints reach ~3 million.
    max_trade_size: float = 50_000_000.0
    sentinels: tuple[float, ...] = DEFAULT_SENTINELS


def _sentinel(values: np.ndarray, sentinels: tuple[float, ...]) -> np.ndarray:
    """`values` that are sentinels (one comparison in the usual case of none that large)."""
    with np.errstate(invalid="ignore"):
        large = values >= min(sentinels, default=np.inf)
    if large.any():
        large &= np.isin(values, sentinels)
    return large


def validate(cols: TickColumns, rules: ValidationRules) -> list[str | None]:
    """One entry per tick: None when the tick is acceptable, else the reason it is not."""
    reasons: list[str | None] = [None] * len(cols)
    for i, reason in rejections(cols, rules).items():
        reasons[i] = reason
    return reasons


def rejections(cols: TickColumns, rules: ValidationRules) -> dict[int, str]:
    """The ticks that may not be used, by index, with the first rule each breaks (in index
    order). Array operations over the batch; Python only for the rejected ticks."""
    reasons: dict[int, str] = {}
    trade, quote = cols.is_trade, ~cols.is_trade
    sentinels = rules.sentinels
    with np.errstate(invalid="ignore"):
        checks = (
            (cols.ts <= 0, "timestamp missing or before 1970"),
            (cols.ts > cols.published_ns + rules.max_future_ns, "timestamp in the future"),
            (trade & ~np.isfinite(cols.price), "trade price missing or not finite"),
            (trade & (cols.price <= 0), "trade price not positive (sentinel or bad print)"),
            (trade & _sentinel(cols.price, sentinels), "trade price is a sentinel value"),
            (trade & ~np.isfinite(cols.volume), "trade size missing or not finite"),
            (trade & (cols.volume <= 0), "trade size not positive"),
            (trade & (cols.volume > rules.max_trade_size), "trade size out of range"),
            (quote & ~(np.isfinite(cols.bid) & np.isfinite(cols.ask)), "quote side missing"),
            (quote & ((cols.bid <= 0) | (cols.ask <= 0)), "quote price not positive"),
            (quote & (_sentinel(cols.bid, sentinels) | _sentinel(cols.ask, sentinels)),
             "quote price is a sentinel value"),
            (quote & (cols.bid > cols.ask), "crossed quote (bid above ask)"),
        )  # fmt: skip
    if not np.logical_or.reduce([mask for mask, _ in checks]).any():
        return reasons
    for mask, reason in checks:
        for i in np.flatnonzero(mask).tolist():
            reasons.setdefault(i, reason)
    return dict(sorted(reasons.items()))
