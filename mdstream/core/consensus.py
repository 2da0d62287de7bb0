"""Cross-provider consensus price: a weighted median, robust to one bad or stale provider.

The 25th/75th weighted percentiles give its uncertainty (as Pyth does with its publishers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total (no interpolation).

    No interpolation keeps the answer one of the providers' own prices: with two providers the
    median is the lower one, never an average that nobody quoted. Plain Python: there are a
    handful of providers, where numpy's per-call cost would dominate.
    """
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        raise ValueError("weighted quantile of nothing")
    target = q * total * (1 - 1e-12)
    cum = 0.0
    for value, weight in pairs:
        cum += weight
        if cum >= target:
            return float(value)
    return float(pairs[-1][0])


@dataclass(frozen=True)
class Consensus:
    price: float
    p25: float
    p75: float
    providers: int
    as_of: int  # event time, ns
    # (provider, price, weight) of each voter, when the caller named them.
    sources: tuple[tuple[str, float, float], ...] = ()

    @property
    def spread(self) -> float:
        """Relative uncertainty: interquartile range over price."""
        return (self.p75 - self.p25) / self.price

    def to_record(self) -> dict[str, Any]:
        return {
            "price": self.price,
            "p25": self.p25,
            "p75": self.p75,
            "providers": self.providers,
            "as_of": self.as_of,
            "sources": [{"provider": n, "price": p, "weight": w} for n, p, w in self.sources],
        }


def weighted_quantiles(
    values: Sequence[float], weights: Sequence[float], qs: Sequence[float]
) -> list[float]:
    """`weighted_quantile` for several ascending q at once (one sort)."""
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        raise ValueError("weighted quantile of nothing")
    out: list[float] = []
    cum, i = 0.0, -1
    for q in qs:
        target = q * total * (1 - 1e-12)
        while cum < target and i < len(pairs) - 1:
            i += 1
            cum += pairs[i][1]
        out.append(float(pairs[max(i, 0)][0]))
    return out


def build_consensus(
    prices: Sequence[float],
    weights: Sequence[float],
    as_of: int,
    names: Sequence[str] | None = None,
) -> Consensus | None:
    if not len(prices):
        return None
    p25, median, p75 = weighted_quantiles(prices, weights, (0.25, 0.5, 0.75))
    sources = tuple(zip(names, prices, weights, strict=True)) if names is not None else ()
    return Consensus(median, p25, p75, len(prices), as_of, sources)
