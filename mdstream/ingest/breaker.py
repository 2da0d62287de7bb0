"""Circuit breaker per provider, its state in Redis so restarts and other processes share it.

closed ──N consecutive failures──► open ──cool-down──► half-open ──success(es)──► closed
                                    ▲                      │
                                    └──────failure─────────┘

Every transition is one Lua script run by Redis (atomic, and timed by Redis's own clock, so
processes on hosts with skewed clocks agree). Half-open lets through at most `half_open_trials`
calls; a trial whose caller died without reporting is given back after another cool-down, so a
crashed process cannot wedge the breaker half-open.

Because the script reports the transition it made, exactly one caller sees each closed → open
transition: that caller publishes the `SOURCE_UNAVAILABLE` alert (RAISED), and the caller that
closes it again publishes the CLEARED one. Alert ids are deterministic (provider, outage number),
so a retried publish is recognisable as the same alert. A half-open → open relapse is the same
outage: no new alert.

The state is exported as the gauge ``mdstream_breaker_state{provider}`` (0 closed, 1 half-open,
2 open).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mdstream.core.quality.alerts import ALL_SOURCES, alert
from mdstream.ops import metrics

log = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    half_open_trials: int = 1
    # Successful trials needed to close again (at most half_open_trials).
    close_after: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.close_after <= self.half_open_trials or self.failure_threshold < 1:
            raise ValueError(f"invalid breaker config {self}")


# KEYS[1] = the provider's hash. ARGV = op, threshold, cooldown_ms, trials, close_after.
# Returns {state, transition, outage}: transition is "", "opened", "reopened", "half_open",
# "closed"; outage counts closed → open transitions (the alert's identity).
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local cooldown = tonumber(ARGV[3])
local trials = tonumber(ARGV[4])
local close_after = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', key, 'state', 'failures', 'since', 'used', 'ok', 'outage')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
local since = tonumber(h[3]) or 0
local used = tonumber(h[4]) or 0
local ok = tonumber(h[5]) or 0
local outage = tonumber(h[6]) or 0
local transition = ''
local result = 1

if state == 'open' and now - since >= cooldown then
  state = 'half_open'; since = now; used = 0; ok = 0; transition = 'half_open'
elseif state == 'half_open' and used >= trials and now - since >= cooldown then
  -- trials handed out but never reported (their callers died): hand them out again
  since = now; used = 0; ok = 0
end

if op == 'allow' then
  if state == 'open' then
    result = 0
  elseif state == 'half_open' then
    if used < trials then used = used + 1 else result = 0 end
  end
elseif op == 'success' then
  if state == 'closed' then
    failures = 0
  elseif state == 'half_open' then
    ok = ok + 1
    if ok >= close_after then
      state = 'closed'; failures = 0; used = 0; ok = 0; since = now; transition = 'closed'
    end
  end
elseif op == 'failure' then
  if state == 'closed' then
    failures = failures + 1
    if failures >= threshold then
      state = 'open'; since = now; outage = outage + 1; transition = 'opened'
    end
  elseif state == 'half_open' then
    state = 'open'; since = now; used = 0; ok = 0; transition = 'reopened'
  end
elseif op == 'reset' then
  state = 'closed'; failures = 0; used = 0; ok = 0; since = now
end

redis.call('HSET', key, 'state', state, 'failures', failures, 'since', since, 'used', used,
           'ok', ok, 'outage', outage)
return {state, transition, outage, result, failures}
"""

_STATES = {
    "closed": BreakerState.CLOSED,
    "half_open": BreakerState.HALF_OPEN,
    "open": BreakerState.OPEN,
}

breaker_gauge = metrics.breaker_state


def source_unavailable_alert(
    provider: str, status: str, outage: int, at_ns: int, description: str
) -> dict[str, Any]:
    """The alert record of one outage of a provider (instrument ``*``: the whole source)."""
    return alert(
        "SOURCE_UNAVAILABLE",
        "CRITICAL",  # both ends: the CRITICAL topic sees the outage open and close
        status,
        provider,
        ALL_SOURCES,
        description,
        at_ns,
        f"outage-{outage}",
    )


AlertPublisher = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    state: BreakerState
    transition: str
    outage: int
    allowed: bool
    failures: int


class RedisBreaker:
    """The `Breaker` of one provider, kept in Redis under ``{prefix}breaker:{provider}``."""

    def __init__(
        self,
        redis: Redis,
        provider: str,
        config: BreakerConfig | None = None,
        *,
        publish_alert: AlertPublisher | None = None,
        prefix: str = "mdstream:",
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.redis = redis
        self.provider = provider
        self.config = config or BreakerConfig()
        self.key = f"{prefix}breaker:{provider}"
        self._publish = publish_alert
        self._script = redis.register_script(_SCRIPT)
        self._gauge = breaker_gauge(registry).labels(provider=provider)
        self._last_reason = ""
        self._unsent: list[dict[str, Any]] = []

    async def _run(self, op: str) -> Outcome:
        c = self.config
        try:
            raw = await self._script(
                keys=[self.key],
                args=[
                    op,
                    c.failure_threshold,
                    int(c.cooldown_s * 1000),
                    c.half_open_trials,
                    c.close_after,
                ],
            )
        except (RedisError, OSError):
            metrics.STORE_UP.labels("redis").set(0)
            raise
        metrics.STORE_UP.labels("redis").set(1)
        state_name, transition, outage, allowed, failures = (
            v.decode() if isinstance(v, bytes) else v for v in raw
        )
        out = Outcome(_STATES[state_name], transition, int(outage), bool(allowed), int(failures))
        self._gauge.set(int(out.state))
        if out.transition:
            log.warning("breaker %s: %s (outage %d)", self.provider, out.transition, out.outage)
        await self._send_unsent()
        await self._alert_on(out)
        return out

    async def _alert_on(self, out: Outcome) -> None:
        if self._publish is None or out.transition not in ("opened", "closed"):
            return
        if out.transition == "opened":
            status = "RAISED"
            text = (
                f"{self.provider} unavailable: circuit breaker opened after "
                f"{self.config.failure_threshold} consecutive failures (last: {self._last_reason})"
            )
        else:
            status, text = "CLEARED", f"{self.provider} available again: circuit breaker closed"
        self._unsent.append(
            source_unavailable_alert(self.provider, status, out.outage, time.time_ns(), text)
        )
        await self._send_unsent()

    async def _send_unsent(self) -> None:
        """Publish pending alerts in order; one that fails stays pending and is retried at the
        next breaker call (its id is deterministic, so a retry is recognisably the same alert)."""
        while self._unsent and self._publish is not None:
            try:
                await self._publish(self._unsent[0])
            except Exception:
                log.exception("breaker %s: alert not published; will retry", self.provider)
                return
            self._unsent.pop(0)

    async def allow(self) -> bool:
        return (await self._run("allow")).allowed

    async def record_success(self) -> None:
        await self._run("success")

    async def record_failure(self, reason: str) -> None:
        self._last_reason = reason
        await self._run("failure")

    async def state(self) -> BreakerState:
        """The current state (moving open → half-open when the cool-down has passed)."""
        return (await self._run("peek")).state

    async def reset(self) -> None:
        """Force closed (an operator's override); publishes nothing."""
        await self._run("reset")
