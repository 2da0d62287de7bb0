"""Token buckets: strict windows, per-endpoint groups, identical-request spacing, Retry-After.

A fake clock whose sleep advances time runs minutes of pacing instantly and exactly.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mdstream.ingest.ratelimit import (
    PROVIDER_LIMITS,
    EndpointLimit,
    LimitSpec,
    Rate,
    TokenBucketLimiter,
    parse_retry_after,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def make(spec: LimitSpec) -> tuple[TokenBucketLimiter, FakeClock]:
    clock = FakeClock()
    return TokenBucketLimiter("p", spec, clock=clock, sleep=clock.sleep), clock


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window - 1e-9:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_strict_window_never_exceeded_and_calls_are_paced():
    limiter, clock = make(LimitSpec(provider=(Rate(5, 60.0),)))
    times = []
    for _ in range(20):
        await limiter.acquire("quote")
        times.append(clock.now)
    assert max_in_window(times, 60.0) <= 5
    # Evenly paced at (5 - 1) / 60 s⁻¹ after the first call: 19 gaps of 15 s.
    assert times[-1] - times[0] == pytest.approx(19 * 15.0)


async def test_burst_then_rate():
    limiter, clock = make(LimitSpec(provider=(Rate(30, 1.0, burst=30), Rate(60, 60.0, burst=10))))
    times = []
    for _ in range(70):
        await limiter.acquire("quote")
        times.append(clock.now)
    assert times[9] == times[0]  # the burst of 10 is immediate
    assert times[10] > times[0]
    assert max_in_window(times, 60.0) <= 60
    assert max_in_window(times, 1.0) <= 30


async def test_concurrent_tasks_share_the_bucket():
    limiter, clock = make(LimitSpec(provider=(Rate(5, 60.0),)))
    times: list[float] = []

    async def worker() -> None:
        for _ in range(5):
            await limiter.acquire("bars")
            times.append(clock.now)

    await asyncio.gather(*(worker() for _ in range(4)))
    assert len(times) == 20
    assert max_in_window(times, 60.0) <= 5


async def test_endpoint_groups_have_their_own_buckets_and_identical_spacing():
    spec = LimitSpec(
        endpoints={"historical": EndpointLimit(rates=(Rate(60, 600.0),), identical_spacing_s=15.0)}
    )
    limiter, clock = make(spec)
    await limiter.acquire("historical/AAPL|1 min|1 D")
    start = clock.now
    await limiter.acquire("historical/MSFT|1 min|1 D")  # different request: only the 60/10 min pace
    assert clock.now - start == pytest.approx(600.0 / 59)
    await limiter.acquire("historical/AAPL|1 min|1 D")  # identical: at least 15 s after the first
    assert clock.now - start >= 15.0
    before = clock.now
    await limiter.acquire("market_data/AAPL")  # another group: not limited at all
    assert clock.now == before


async def test_ib_pacing_sixty_per_ten_minutes():
    limiter, clock = make(PROVIDER_LIMITS["ib"])
    times = []
    for i in range(130):
        await limiter.acquire(f"historical/REQ{i % 3}")
        times.append(clock.now)
    assert max_in_window(times, 600.0) <= 60
    by_key: dict[int, list[float]] = {}
    for i, t in enumerate(times):
        by_key.setdefault(i % 3, []).append(t)
    for ts in by_key.values():
        assert min(b - a for a, b in itertools.pairwise(ts)) >= 15.0


async def test_retry_after_blocks_the_group_then_resumes_paced():
    limiter, clock = make(LimitSpec(provider=(Rate(100, 1.0, burst=100),)))
    await limiter.acquire("bars/AAPL")
    limiter.retry_after("bars/AAPL", 30.0)
    before = clock.now
    await limiter.acquire("quote/AAPL")  # another group is not blocked by an endpoint's 429 ...
    assert clock.now - before < 1.0
    await limiter.acquire("bars/MSFT")  # ... but the same group is
    assert clock.now - before >= 30.0


async def test_retry_after_all_endpoints():
    limiter, clock = make(LimitSpec())
    limiter.retry_after("*", 12.5)
    await limiter.acquire("anything")
    assert clock.now == pytest.approx(1012.5)


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    # HTTP-date form, relative to a fixed "now"
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", 1445412480.0) == pytest.approx(30.0)


def test_invalid_rate_rejected():
    with pytest.raises(ValueError):
        Rate(5, 60.0, burst=6)
    with pytest.raises(ValueError):
        Rate(5, 0.0)
