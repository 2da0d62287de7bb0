"""Alpha Vantage over HTTP: rate-limited, breaker-guarded requests; backfill source; quote poller.

Alpha Vantage signals its limits in HTTP-200 bodies, not with 429s: a ``Note`` (per-minute limit)
blocks every endpoint for a minute and the call is retried; an ``Information`` (daily limit)
blocks until the next UTC midnight and fails the call with `DailyLimitReached`. HTTP errors and
timeouts are breaker failures and are retried with backoff; ``Error Message`` bodies (a bad call or
symbol) are the caller's data errors, dead-lettered, and not breaker failures.

The API key comes from ``ALPHA_VANTAGE_API_KEY`` or the file named by
``ALPHA_VANTAGE_API_KEY_FILE``; it is never logged, and removed from dead-letter payloads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from mdstream.ingest.protocols import AlwaysClosed, Breaker, Limiter, TickSink
from mdstream.ingest.ratelimit import (
    ALL_ENDPOINTS,
    LimitSpec,
    Rate,
    TokenBucketLimiter,
    parse_retry_after,
)
from mdstream.providers.alpha_vantage import PROVIDER, parse_body
from mdstream.providers.base import FrameError, ParseResult

log = logging.getLogger(__name__)
DEFAULT_URL = "https://www.alphavantage.co/query"
_FREQ_TO_INTERVAL = {"1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "60min"}


class SourceUnavailable(RuntimeError):
    """The provider's breaker is open, or it kept failing through the retries."""


class DailyLimitReached(RuntimeError):
    pass


def api_key_from_env(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    if env.get("ALPHA_VANTAGE_API_KEY"):
        return env["ALPHA_VANTAGE_API_KEY"]
    if env.get("ALPHA_VANTAGE_API_KEY_FILE"):
        return Path(env["ALPHA_VANTAGE_API_KEY_FILE"]).read_text().strip()
    raise RuntimeError(
        "Alpha Vantage needs an API key: set ALPHA_VANTAGE_API_KEY or ALPHA_VANTAGE_API_KEY_FILE"
    )


def limits_from_env(env: dict[str, str] | None = None) -> LimitSpec:
    env = dict(os.environ) if env is None else env
    per_minute = int(env.get("MDSTREAM_ALPHA_VANTAGE_PER_MINUTE", "5"))
    per_day = int(env.get("MDSTREAM_ALPHA_VANTAGE_PER_DAY", "25"))
    rates = [Rate(per_minute, 60.0, burst=max(1, per_minute // 5))]
    if per_day > 0:
        rates.append(Rate(per_day, 86_400.0, burst=max(1, per_day // 2)))
    return LimitSpec(provider=tuple(rates))


def _seconds_to_utc_midnight(now: datetime | None = None) -> float:
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


class AlphaVantageClient:
    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_URL,
        limiter: Limiter | None = None,
        breaker: Breaker | None = None,
        retries: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        note_penalty_s: float = 60.0,
    ) -> None:
        self.base_url = base_url
        self._key = api_key
        self.limiter = limiter or TokenBucketLimiter(PROVIDER)
        self.breaker = breaker or AlwaysClosed()
        self.retries = retries
        self.backoff_s = backoff_s
        self.note_penalty_s = note_penalty_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AlphaVantageClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def scrub(self, payload: bytes) -> bytes:
        return payload.replace(self._key.encode(), b"***") if self._key else payload

    async def query(self, params: dict[str, str], symbol: str) -> ParseResult:
        """One call, through limiter and breaker, retried on limits and transient failures."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        function = params["function"]
        failure = "no attempt"
        for attempt in range(self.retries + 1):
            if not await self.breaker.allow():
                raise SourceUnavailable(f"{PROVIDER} circuit breaker is open ({failure})")
            await self.limiter.acquire(function)
            try:
                async with self._session.get(
                    self.base_url, params={**params, "apikey": self._key}
                ) as resp:
                    body = await resp.read()
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                await self.breaker.record_failure(failure)
                await asyncio.sleep(self.backoff_s * 2**attempt)
                continue
            if status == 429:
                self.limiter.retry_after(ALL_ENDPOINTS, retry_after or 60.0)
                failure = "HTTP 429"
                continue
            if status >= 400:
                failure = f"HTTP {status}"
                await self.breaker.record_failure(failure)
                if retry_after is not None:
                    self.limiter.retry_after(ALL_ENDPOINTS, retry_after)
                await asyncio.sleep(self.backoff_s * 2**attempt)
                continue
            await self.breaker.record_success()
            result = parse_body(body, function, symbol, received_ns=time.time_ns())
            limit = next((c for c in result.control if c["type"] == "rate_limited"), None)
            if limit is None:
                result.errors = [
                    FrameError(e.provider, e.reason, self.scrub(e.payload)) for e in result.errors
                ]
                return result
            if limit["scope"] == "day":
                self.limiter.retry_after(ALL_ENDPOINTS, _seconds_to_utc_midnight())
                raise DailyLimitReached(self.scrub(limit["message"].encode()).decode())
            log.warning("%s per-minute limit hit; pausing %g s", PROVIDER, self.note_penalty_s)
            self.limiter.retry_after(ALL_ENDPOINTS, self.note_penalty_s)
            failure = "per-minute limit"
        raise SourceUnavailable(f"{PROVIDER}: {function} {symbol} failed: {failure}")


def _months(start: datetime, end: datetime) -> list[str]:
    """The YYYY-MM months that [start, end) touches (in US/Eastern, the API's zone; a UTC
    month boundary is a few hours later, so one extra month at each end covers it)."""
    first = (start - timedelta(days=1)).replace(day=1)
    months = []
    at = first
    while at < end:
        months.append(at.strftime("%Y-%m"))
        at = (at.replace(day=28) + timedelta(days=4)).replace(day=1)
    return months


class AlphaVantageSource:
    """`HistoricalSource`: intraday bars by month (``month=YYYY-MM``, full output) or daily bars."""

    provider = PROVIDER
    max_span = timedelta(days=31)

    def __init__(self, client: AlphaVantageClient) -> None:
        self.client = client
        self.base_url = client.base_url

    @classmethod
    def from_env(cls) -> AlphaVantageSource:
        """Key as in `api_key_from_env`; ``MDSTREAM_ALPHA_VANTAGE_URL``; a premium key's limits
        in ``MDSTREAM_ALPHA_VANTAGE_PER_MINUTE`` (5) and ``..._PER_DAY`` (25; 0 = no daily cap)."""
        return cls(
            AlphaVantageClient(
                api_key_from_env(),
                base_url=os.environ.get("MDSTREAM_ALPHA_VANTAGE_URL", DEFAULT_URL),
                limiter=TokenBucketLimiter(PROVIDER, limits_from_env()),
            )
        )

    async def fetch(self, symbol: str, start: datetime, end: datetime, freq: str) -> ParseResult:
        lo = int(start.timestamp() * 1e9)
        hi = int(end.timestamp() * 1e9)
        out = ParseResult()
        if freq == "1d":
            requests = [{"function": "TIME_SERIES_DAILY", "symbol": symbol, "outputsize": "full"}]
        elif freq in _FREQ_TO_INTERVAL:
            requests = [
                {
                    "function": "TIME_SERIES_INTRADAY",
                    "symbol": symbol,
                    "interval": _FREQ_TO_INTERVAL[freq],
                    "month": month,
                    "outputsize": "full",
                    "extended_hours": "true",
                }
                for month in _months(start, end)
            ]
        else:
            raise ValueError(f"{PROVIDER} has no {freq!r} bars (1m, 5m, 15m, 30m, 1h, 1d)")
        seen: set[int] = set()
        for params in requests:
            part = await self.client.query(params, symbol)
            out.errors += part.errors
            out.control += part.control
            for bar in part.bars:
                if lo <= bar.start_ns < hi and bar.start_ns not in seen:
                    seen.add(bar.start_ns)
                    out.bars.append(bar)
        out.bars.sort(key=lambda b: b.start_ns)
        return out


class AlphaVantageQuotePoller:
    """Polls GLOBAL_QUOTE for each symbol, round-robin, as fast as the limiter allows."""

    def __init__(self, client: AlphaVantageClient, symbols: Sequence[str], sink: TickSink) -> None:
        self.client = client
        self.symbols = list(symbols)
        self.sink = sink
        self.polls = 0

    async def poll_once(self) -> None:
        for symbol in self.symbols:
            result = await self.client.query({"function": "GLOBAL_QUOTE", "symbol": symbol}, symbol)
            for tick in result.ticks:
                await self.sink.submit(tick)
            for err in result.errors:
                await self.sink.dead_letter(err)
            self.polls += 1

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except SourceUnavailable as exc:
                log.warning("%s", exc)
                await asyncio.sleep(self.client.backoff_s)
            except DailyLimitReached as exc:
                log.error("%s: daily limit reached: %s", PROVIDER, exc)
