"""Which provider feeds an instrument: the failover decision as a pure state machine.

Per instrument there is an order of providers (primary, secondary, ...). Each poll the I/O edge
(`mdstream.ingest.failover`) reports every provider's health:

- ``UP``: breaker closed and connection healthy;
- ``TRIAL``: breaker half-open (its cool-down passed): worth a trial subscription;
- ``DOWN``: breaker open, or the connection unhealthy.

and `step` answers with the new state and the subscription changes to make:

1. The active provider going DOWN is dropped at once; the first UP provider in the order takes
   over (a TRIAL one if none is UP). With none left the instrument is served from the cache of
   last prices, flagged stale.
2. Recovery is gradual: a provider ranked above the active one that is on TRIAL is subscribed
   *alongside* it (the pipeline never sums providers, so the overlap costs nothing); once it has
   been UP for `hold_ns` without interruption it becomes active and the one it relieves is
   unsubscribed. Flapping providers therefore never take traffic back.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


class Health(enum.Enum):
    UP = "up"
    TRIAL = "trial"
    DOWN = "down"


@dataclass(frozen=True)
class Subscribe:
    provider: str
    symbol: str


@dataclass(frozen=True)
class Unsubscribe:
    provider: str
    symbol: str


@dataclass(frozen=True)
class ServeCache:
    """No provider left: serve the last cached price, flagged stale."""

    symbol: str


@dataclass(frozen=True)
class StopCache:
    symbol: str


Action = Subscribe | Unsubscribe | ServeCache | StopCache


@dataclass(frozen=True)
class InstrumentState:
    active: str | None = None  # None: served from the cache
    trial: str | None = None  # a higher-ranked provider subscribed on trial next to `active`
    up_since: Mapping[str, int] = field(default_factory=dict)  # higher-ranked providers only
    caching: bool = False

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(p for p in (self.active, self.trial) if p is not None)


def _rank(order: Sequence[str], provider: str | None) -> int:
    return len(order) if provider is None else order.index(provider)


def step(
    symbol: str,
    order: Sequence[str],
    state: InstrumentState,
    health: Mapping[str, Health],
    now_ns: int,
    hold_ns: int,
) -> tuple[InstrumentState, list[Action]]:
    """One decision for one instrument. Providers missing from `health` count as DOWN."""

    def h(p: str) -> Health:
        return health.get(p, Health.DOWN)

    before = state.subscribed
    was_caching = state.caching
    active, trial = state.active, state.trial

    if active is not None and h(active) is Health.DOWN:
        active = None
    if trial is not None and h(trial) is Health.DOWN:
        trial = None
    if active is None:
        # Take over at once: the best UP provider, or the best on TRIAL (the trial one first).
        active = next((p for p in order if h(p) is Health.UP), None)
        if active is None:
            active = trial or next((p for p in order if h(p) is Health.TRIAL), None)
        if trial == active or (trial is not None and _rank(order, trial) > _rank(order, active)):
            trial = None

    rank = _rank(order, active)
    up_since = {p: state.up_since.get(p, now_ns) for p in order[:rank] if h(p) is Health.UP}
    # Switch back to the best provider that has been UP long enough.
    settled = [p for p in order[:rank] if p in up_since and now_ns - up_since[p] >= hold_ns]
    if settled:
        active = settled[0]
        rank = _rank(order, active)
        up_since = {p: t for p, t in up_since.items() if _rank(order, p) < rank}
        if trial is not None and _rank(order, trial) >= rank:
            trial = None
    # Keep (or start) one trial subscription: the best provider above the active one that is
    # on TRIAL or UP-but-not-yet-settled.
    if trial is None:
        trial = next((p for p in order[:rank] if h(p) in (Health.TRIAL, Health.UP)), None)

    new = replace(state, active=active, trial=trial, up_since=up_since, caching=active is None)
    after = new.subscribed
    actions: list[Action] = [Subscribe(p, symbol) for p in order if p in after and p not in before]
    actions += [Unsubscribe(p, symbol) for p in order if p in before and p not in after]
    if new.caching and not was_caching:
        actions.append(ServeCache(symbol))
    elif was_caching and not new.caching:
        actions.append(StopCache(symbol))
    return new, actions
