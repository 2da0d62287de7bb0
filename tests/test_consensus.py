"""Cross-provider consensus: weighted median and quartiles without interpolation."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.core.consensus import Consensus, build_consensus, weighted_quantile

AS_OF = 1_764_000_000_000_000_000


@pytest.mark.parametrize(
    "prices",
    [
        [100.0, 100.02, 1000.0],  # a fat finger among three
        [100.0, 100.02, -1.0],  # a sentinel that got through
        [100.0, 99.98, 100.02, 0.01],
        [1000.0, 100.0, 99.99, 100.01, 100.0],
    ],
)
def test_median_is_robust_to_one_outlier_among_three_or_more(prices: list[float]) -> None:
    honest = [p for p in prices if 99 < p < 101]
    c = build_consensus(prices, [1.0] * len(prices), AS_OF)
    assert c is not None
    assert min(honest) <= c.price <= max(honest)
    assert c.price in prices  # no interpolation: a price somebody quoted


def test_two_providers_give_the_lower_price() -> None:
    assert weighted_quantile([101.0, 100.0], [1.0, 1.0], 0.5) == 100.0
    c = build_consensus([250.0, 100.0], [1.0, 1.0], AS_OF)
    assert c is not None
    assert c.price == 100.0  # not 175: nobody quoted that


def test_even_count_gives_the_lower_middle() -> None:
    assert weighted_quantile([4.0, 1.0, 3.0, 2.0], [1.0] * 4, 0.5) == 2.0


def test_weights_shift_the_median() -> None:
    prices = [100.0, 101.0, 102.0]
    assert weighted_quantile(prices, [1.0, 1.0, 1.0], 0.5) == 101.0
    assert weighted_quantile(prices, [1.0, 1.0, 5.0], 0.5) == 102.0
    assert weighted_quantile(prices, [5.0, 1.0, 1.0], 0.5) == 100.0
    # A trusted provider outweighs two others agreeing with each other.
    assert weighted_quantile([100.0, 105.0, 105.0], [3.0, 1.0, 1.0], 0.5) == 100.0
    # Zero weight: the price is ignored.
    assert weighted_quantile([100.0, 101.0, 500.0], [1.0, 1.0, 0.0], 0.75) == 101.0


def test_quantiles_reach_their_cumulative_weight() -> None:
    prices = [10.0, 20.0, 30.0, 40.0]
    weights = [1.0, 1.0, 1.0, 1.0]
    assert weighted_quantile(prices, weights, 0.25) == 10.0  # cum 1/4 reaches 0.25 exactly
    assert weighted_quantile(prices, weights, 0.26) == 20.0
    assert weighted_quantile(prices, weights, 0.75) == 30.0
    assert weighted_quantile(prices, weights, 1.0) == 40.0
    assert weighted_quantile(prices, weights, 0.0) == 10.0


def test_consensus_record_and_spread() -> None:
    c = build_consensus([100.0, 102.0, 101.0, 99.0], [1.0] * 4, AS_OF)
    assert c == Consensus(price=100.0, p25=99.0, p75=101.0, providers=4, as_of=AS_OF)
    assert c.p25 <= c.price <= c.p75
    assert c.spread == pytest.approx(2.0 / 100.0)
    assert c.to_record() == {
        "price": 100.0,
        "p25": 99.0,
        "p75": 101.0,
        "providers": 4,
        "as_of": AS_OF,
        "sources": [],
    }


def test_quartiles_of_five_equal_providers() -> None:
    c = build_consensus([105.0, 101.0, 103.0, 102.0, 104.0], [1.0] * 5, AS_OF)
    assert c is not None
    # Cumulative weights 1..5 of 5: 0.25 is first reached at the 2nd, 0.75 at the 4th price.
    assert (c.p25, c.price, c.p75) == (102.0, 103.0, 104.0)


def test_single_provider() -> None:
    c = build_consensus([228.5], [1.0], AS_OF)
    assert c is not None
    assert (c.price, c.p25, c.p75, c.providers, c.spread) == (228.5, 228.5, 228.5, 1, 0.0)


def test_errors_on_empty_or_weightless_input() -> None:
    assert build_consensus([], [], AS_OF) is None
    with pytest.raises(ValueError, match="nothing"):
        weighted_quantile([], [], 0.5)
    with pytest.raises(ValueError, match="nothing"):
        weighted_quantile([100.0, 101.0], [0.0, 0.0], 0.5)
    with pytest.raises(ValueError, match="nothing"):
        build_consensus([100.0], [0.0], AS_OF)
    with pytest.raises(ValueError):
        weighted_quantile([100.0, 101.0], [1.0], 0.5)  # lengths differ


def _is_weighted_quantile(prices: list[float], weights: list[float], q: float, r: float) -> bool:
    """r is a quoted price; the weight strictly below r is short of q, the weight up to r not."""
    target = Fraction(str(q)) * Fraction(sum(weights))  # exact: q is meant as written
    below = sum(w for p, w in zip(prices, weights, strict=True) if p < r)
    at_or_below = sum(w for p, w in zip(prices, weights, strict=True) if p <= r)
    return r in prices and below < target <= at_or_below


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=1e6, allow_nan=False),
            st.integers(min_value=1, max_value=10),
        ),
        min_size=1,
        max_size=9,
    ),
    q=st.sampled_from([0.1, 0.25, 0.5, 0.75, 0.9]),
)
def test_weighted_quantile_definition(pairs: list[tuple[float, int]], q: float) -> None:
    """The smallest quoted price whose cumulative weight reaches q of the total."""
    prices = [p for p, _ in pairs]
    weights = [float(w) for _, w in pairs]
    assert _is_weighted_quantile(prices, weights, q, weighted_quantile(prices, weights, q))
    c = build_consensus(prices, weights, AS_OF)
    assert c is not None
    assert _is_weighted_quantile(prices, weights, 0.5, c.price)
    assert _is_weighted_quantile(prices, weights, 0.25, c.p25)
    assert _is_weighted_quantile(prices, weights, 0.75, c.p75)
    assert c.p25 <= c.price <= c.p75
    assert c.providers == len(prices)
