"""Token-bucket rate limits per provider and per endpoint, shared by all tasks of an adapter.

One `TokenBucketLimiter` per provider (per API key, really: that is what providers count). A call
to endpoint ``E`` takes one token from every bucket that covers it: the provider-wide buckets and
those of E's *group* (the part of E before the first ``/``; ``historical/AAPL|1 min|1 D`` is in
group ``historical``). A group may also ask for a minimum spacing between *identical* requests
(the full endpoint string), which is Interactive Brokers' pacing rule.

Strict windows. A bucket for "N calls per W seconds" holds ``burst`` tokens and refills at
``(N - burst) / W`` per second, so no window of W seconds ever sees more than N calls (a bucket
refilled at N/W would allow burst + N). ``burst`` = 1 paces calls evenly.

Default limits (`PROVIDER_LIMITS`), from the providers' documentation as found on 2026-11-24:

- Finnhub: 60 calls/min on the free plan, and on top of every plan 30 calls/s
  (finnhub.io/docs/api/rate-limit: "On top of all plan's limit, there is a 30 API calls/second
  limit"; the free tier's 60/min is quoted from Finnhub's billing page in
  github.com/Finnhub-Stock-API/finnhub-js/issues/2). Exceeding it gives HTTP 429.
- Alpaca market data: 200 requests/min on the free Basic plan (docs.alpaca.markets/docs/
  api-rate-limits; Algo Trader Plus: 10,000/min). HTTP 429 with X-RateLimit-Reset.
- Alpha Vantage: 5 requests/min and 25 requests/day on a free key (alphavantage.co/premium;
  the daily cap was 500 until 2024). Over the limit it answers HTTP 200 with a ``Note``
  (per minute) or ``Information`` (per day) body, never a 429.
- Polygon (Massive since 2025-10-30): 5 API calls/min on the free Basic plan (polygon.io/pricing).
- Interactive Brokers historical data (interactivebrokers.github.io/tws-api/
  historical_limitations.html): no identical request within 15 s, no more than 60 requests in
  any 10 minutes (and no six requests for one contract within 2 s, which the 15 s rule for
  identical requests plus the 60/10 min pacing makes rare; BID_ASK requests count twice).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from mdstream.ops import metrics

ALL_ENDPOINTS = "*"


@dataclass(frozen=True)
class Rate:
    """At most `calls` calls in any window of `per_s` seconds, with `burst` of them at once."""

    calls: int
    per_s: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.burst <= self.calls or self.per_s <= 0:
            raise ValueError(f"invalid rate {self}")

    @property
    def refill_per_s(self) -> float:
        # A burst as large as the whole window's allowance would never refill: keep a trickle.
        return max(self.calls - self.burst, 1) / self.per_s


@dataclass(frozen=True)
class EndpointLimit:
    rates: tuple[Rate, ...] = ()
    # Minimum seconds between two identical requests (same full endpoint string).
    identical_spacing_s: float = 0.0


@dataclass(frozen=True)
class LimitSpec:
    provider: tuple[Rate, ...] = ()
    endpoints: Mapping[str, EndpointLimit] = field(default_factory=dict)


PROVIDER_LIMITS: dict[str, LimitSpec] = {
    "finnhub": LimitSpec(provider=(Rate(60, 60.0), Rate(30, 1.0, burst=30))),
    "alpaca": LimitSpec(provider=(Rate(200, 60.0, burst=10),)),
    # The daily bucket may be spent in bursts of 5 (the minute bucket paces those).
    "alpha_vantage": LimitSpec(provider=(Rate(5, 60.0), Rate(25, 86_400.0, burst=12))),
    "polygon": LimitSpec(provider=(Rate(5, 60.0),)),
    "ib": LimitSpec(
        endpoints={"historical": EndpointLimit(rates=(Rate(60, 600.0),), identical_spacing_s=15.0)}
    ),
}


class _Bucket:
    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(float(self.rate.burst), self.tokens + elapsed * self.rate.refill_per_s)
        self.stamp = now

    def wait_s(self) -> float:
        """Seconds until one token is available (after `refill`)."""
        missing = 1.0 - self.tokens
        return 0.0 if missing <= 1e-12 else missing / self.rate.refill_per_s


def endpoint_group(endpoint: str) -> str:
    return endpoint.split("/", 1)[0]


def parse_retry_after(value: str | None, now_epoch_s: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (delay-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_epoch_s is None else now_epoch_s
    return max(0.0, when.timestamp() - now)


class TokenBucketLimiter:
    """The `Limiter` of one provider. asyncio-safe: share one instance across the adapter's tasks.

    `clock` and `sleep` are injectable so tests can run hours of pacing in no time.
    """

    def __init__(
        self,
        provider: str,
        spec: LimitSpec | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.spec = PROVIDER_LIMITS.get(provider, LimitSpec()) if spec is None else spec
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        now = clock()
        self._provider_buckets = [_Bucket(r, now) for r in self.spec.provider]
        self._group_buckets: dict[str, list[_Bucket]] = {}
        self._last_identical: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}
        self.waited_s = 0.0  # total time callers spent waiting (a metric, and handy in tests)

    def _buckets(self, endpoint: str, now: float) -> list[_Bucket]:
        group = endpoint_group(endpoint)
        if group not in self._group_buckets:
            limit = self.spec.endpoints.get(group, EndpointLimit())
            self._group_buckets[group] = [_Bucket(r, now) for r in limit.rates]
        return self._provider_buckets + self._group_buckets[group]

    def _wait_s(self, endpoint: str, now: float) -> float:
        group = endpoint_group(endpoint)
        waits = [
            self._blocked_until.get(ALL_ENDPOINTS, 0.0) - now,
            self._blocked_until.get(group, 0.0) - now,
        ]
        spacing = self.spec.endpoints.get(group, EndpointLimit()).identical_spacing_s
        if spacing and endpoint in self._last_identical:
            waits.append(self._last_identical[endpoint] + spacing - now)
        for bucket in self._buckets(endpoint, now):
            bucket.refill(now)
            waits.append(bucket.wait_s())
        return max(0.0, *waits)

    async def acquire(self, endpoint: str) -> None:
        """Wait until a call to `endpoint` is within every limit, then count it."""
        while True:
            async with self._lock:
                now = self._clock()
                wait = self._wait_s(endpoint, now)
                if wait <= 0.0:
                    for bucket in self._buckets(endpoint, now):
                        bucket.tokens -= 1.0
                    self._last_identical[endpoint] = now
                    return
            self.waited_s += wait
            metrics.RATE_LIMIT_WAIT_SECONDS.labels(self.provider).inc(wait)
            await self._sleep(wait)

    def retry_after(self, endpoint: str, seconds: float) -> None:
        """Block `endpoint`'s group (or every endpoint, for ``"*"``) for `seconds`.

        Also empties the blocked buckets (the group's own; the provider-wide ones for ``"*"``), so
        calls resume at the paced rate rather than in a burst. A provider that counts per key
        (Alpha Vantage, Polygon) should be penalised with ``"*"``.
        """
        if not math.isfinite(seconds) or seconds < 0:
            return
        now = self._clock()
        key = ALL_ENDPOINTS if endpoint == ALL_ENDPOINTS else endpoint_group(endpoint)
        self._blocked_until[key] = max(self._blocked_until.get(key, 0.0), now + seconds)
        if key == ALL_ENDPOINTS:
            buckets = self._provider_buckets
        else:
            self._buckets(endpoint, now)
            buckets = self._group_buckets[key]
        for bucket in buckets:
            bucket.refill(now)
            bucket.tokens = min(bucket.tokens, 0.0)
            bucket.stamp = now + seconds
