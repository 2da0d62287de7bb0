"""Graceful degradation at the edge: provider health → `failover_policy.step` → (un)subscribe.

Every `poll` turns each provider's breaker state and connection health into a `Health`:

- breaker open → DOWN;
- disconnected → a breaker failure, DOWN;
- subscribed but silent for longer than `stale_after` → a breaker failure, DOWN;
- breaker half-open and connected → TRIAL: the policy subscribes it next to the active provider;
  the trial succeeds (breaker success, which closes it) once data arrives after the subscription,
  and fails when none does within `stale_after`;
- breaker closed, connected, not silent → UP (a breaker success only when data actually came).

Then the pure policy decides per instrument, and the subscription changes are sent to the
adapters (one call per provider with all its symbols). When no provider is left, `last_price`
serves the cached price with `stale=True`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry

from mdstream.core.failover_policy import (
    Action,
    Health,
    InstrumentState,
    ServeCache,
    StopCache,
    Subscribe,
    Unsubscribe,
    step,
)
from mdstream.ingest.breaker import BreakerState
from mdstream.ingest.last_price import CachedPrice, LastPriceCache
from mdstream.ingest.protocols import Breaker, StreamAdapter
from mdstream.ops import metrics

log = logging.getLogger(__name__)


@dataclass
class FailoverConfig:
    orders: Mapping[str, Sequence[str]]  # symbol → providers, best first
    hold_s: float = 30.0  # a recovered provider must stay UP this long before it takes over
    stale_after_s: float = 5.0  # a subscribed provider silent this long is unhealthy
    poll_s: float = 1.0


@dataclass
class _Provider:
    adapter: StreamAdapter
    breaker: Breaker
    subscribed_at: dict[str, int] = field(default_factory=dict)  # symbol → ns


class FailoverManager:
    def __init__(
        self,
        adapters: Mapping[str, StreamAdapter],
        breakers: Mapping[str, Breaker],
        config: FailoverConfig,
        cache: LastPriceCache,
        *,
        clock: Callable[[], int] = time.time_ns,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.providers = {
            name: _Provider(adapter, breakers[name]) for name, adapter in adapters.items()
        }
        self.config = config
        self.cache = cache
        self.clock = clock
        self.states: dict[str, InstrumentState] = {s: InstrumentState() for s in config.orders}
        self._on_cache = metrics.failover_on_cache(registry)

    def active(self, symbol: str) -> str | None:
        return self.states[symbol].active

    async def _breaker_state(self, breaker: Breaker) -> BreakerState:
        state = getattr(breaker, "state", None)
        return await state() if state is not None else BreakerState.CLOSED

    async def _health(self, name: str, now: int) -> Health:
        p = self.providers[name]
        bstate = await self._breaker_state(p.breaker)
        if bstate is BreakerState.OPEN:
            return Health.DOWN
        conn = p.adapter.health()
        if not conn.connected:
            await p.breaker.record_failure("disconnected")
            return Health.DOWN
        stale_ns = int(self.config.stale_after_s * 1e9)
        first = min(p.subscribed_at.values(), default=None)
        latest = max(p.subscribed_at.values(), default=None)
        got_data = first is not None and (conn.last_message_ns or 0) >= first
        # Silent: subscribed, and nothing since the later of the last message and subscription.
        silent = latest is not None and now - max(conn.last_message_ns or 0, latest) > stale_ns
        if silent:
            if bstate is BreakerState.HALF_OPEN:
                await p.breaker.allow()
            await p.breaker.record_failure(f"no data for {self.config.stale_after_s:g} s")
            return Health.DOWN
        if bstate is BreakerState.HALF_OPEN:
            if got_data and await p.breaker.allow():
                await p.breaker.record_success()
                closed = await self._breaker_state(p.breaker) is BreakerState.CLOSED
                return Health.UP if closed else Health.TRIAL
            return Health.TRIAL
        if got_data:
            await p.breaker.record_success()
        return Health.UP

    async def poll(self) -> list[Action]:
        now = self.clock()
        health = {name: await self._health(name, now) for name in self.providers}
        hold_ns = int(self.config.hold_s * 1e9)
        actions: list[Action] = []
        for symbol, order in self.config.orders.items():
            before = self.states[symbol].active
            state, acts = step(symbol, order, self.states[symbol], health, now, hold_ns)
            self.states[symbol] = state
            if before is not None and state.active != before:
                metrics.FAILOVERS.labels(symbol, before, state.active or "cache").inc()
            actions += acts
        await self._apply(actions, now)
        return actions

    async def _apply(self, actions: list[Action], now: int) -> None:
        subs: dict[str, list[str]] = {}
        unsubs: dict[str, list[str]] = {}
        for a in actions:
            if isinstance(a, Subscribe):
                subs.setdefault(a.provider, []).append(a.symbol)
            elif isinstance(a, Unsubscribe):
                unsubs.setdefault(a.provider, []).append(a.symbol)
            elif isinstance(a, ServeCache):
                log.warning("%s: no provider left, serving the last cached price", a.symbol)
                self._on_cache.labels(symbol=a.symbol).set(1)
            elif isinstance(a, StopCache):
                self._on_cache.labels(symbol=a.symbol).set(0)
        for name, symbols in unsubs.items():
            p = self.providers[name]
            for s in symbols:
                p.subscribed_at.pop(s, None)
            try:
                await p.adapter.unsubscribe(symbols)
            except Exception:  # a dead connection cannot unsubscribe; it is dropped anyway
                log.exception("unsubscribe %s from %s failed", symbols, name)
        for name, symbols in subs.items():
            p = self.providers[name]
            log.info("subscribing %s on %s", symbols, name)
            try:
                await p.adapter.subscribe(symbols)
            except Exception as exc:
                await p.breaker.record_failure(f"subscribe failed: {exc!r}")
                continue
            for s in symbols:
                p.subscribed_at[s] = now

    async def last_price(self, symbol: str) -> CachedPrice | None:
        """The cached last price; `stale` when no provider serves the symbol or it is old."""
        return await self.cache.get(
            symbol,
            stale_after_ns=int(self.config.stale_after_s * 1e9),
            force_stale=self.states[symbol].caching,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # Redis or an adapter hiccup must not stop failover
                log.exception("failover poll failed")
            await asyncio.sleep(self.config.poll_s)
