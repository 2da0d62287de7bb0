"""GET with the provider's rate limits: a Limiter before every call, 429 Retry-After honoured,
5xx retried with backoff, rejected credentials reported at once (never retried)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping

import aiohttp

from mdstream.ingest.credentials import redact_text
from mdstream.ingest.protocols import Limiter
from mdstream.ingest.ratelimit import parse_retry_after
from mdstream.ops import metrics

log = logging.getLogger(__name__)


class RestError(RuntimeError):
    """A REST call failed for good; the message says why (secrets removed)."""


class RestAuthError(RestError):
    """The provider refused the credentials: retrying cannot help."""


async def get(
    session: aiohttp.ClientSession,
    limiter: Limiter,
    *,
    provider: str,
    endpoint: str,
    url: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    secrets: tuple[str, ...] = (),
    max_attempts: int = 8,
    default_retry_s: float = 1.0,
) -> bytes:
    """The body of a 200 answer to GET `url`."""
    not_before = 0.0
    last = ""
    for attempt in range(max_attempts):
        await limiter.acquire(endpoint)
        # Whatever the limiter does, never call before a Retry-After has passed.
        await asyncio.sleep(max(0.0, not_before - time.monotonic()))
        try:
            async with session.get(url, params=params, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            not_before = time.monotonic() + random.uniform(0, min(10.0, 0.2 * 2**attempt))
            continue
        if status == 200:
            return body
        text = redact_text(body[:300].decode(errors="replace"), secrets)
        if status == 429:
            parsed = parse_retry_after(retry_after)
            wait = default_retry_s if parsed is None else parsed
            metrics.RATE_LIMITED.labels(provider, endpoint).inc()
            limiter.retry_after(endpoint, wait)
            not_before = time.monotonic() + wait
            last = f"HTTP 429 (Retry-After {wait:.2f} s)"
            log.info("%s %s rate-limited; retrying after %.2f s", provider, endpoint, wait)
        elif status in (401, 403):
            raise RestAuthError(f"{provider} refused the credentials (HTTP {status}): {text}")
        elif status >= 500:
            last = f"HTTP {status}: {text}"
            not_before = time.monotonic() + random.uniform(0, min(10.0, 0.2 * 2**attempt))
        else:
            raise RestError(f"{provider} {endpoint}: HTTP {status}: {text}")
    raise RestError(f"{provider} {endpoint}: gave up after {max_attempts} attempts ({last})")
