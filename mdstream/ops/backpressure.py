"""The throttle controller: reads the workers' lag from the broker, applies `throttle.decide`.

It runs next to the ingest feed (one asyncio task) and tells each batcher what to do
(`RawBatcher.actions`). The level is exported as `mdstream_throttle_level{provider}`, every change
is counted and logged, and every tick not published is counted by the batcher; the
`IngestThrottled` alert fires on the level.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mdstream.ops import metrics
from mdstream.ops.lag import LagMonitor
from mdstream.ops.throttle import (
    Actions,
    Observation,
    ThrottleLimits,
    ThrottleState,
    actions,
    decide,
)

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One provider's batcher (anything with an `actions` attribute)."""

    provider: str
    priority: bool
    batcher: object


class ThrottleController:
    def __init__(
        self,
        monitor: LagMonitor,
        targets: list[Target],
        limits: ThrottleLimits | None = None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monitor, self.targets = monitor, targets
        self.limits = limits or ThrottleLimits()
        self.interval_s, self.clock = interval_s, clock
        self.state = ThrottleState(0, clock())
        self.history: list[tuple[float, int, int | None]] = []  # (time, level, lag) per step
        for t in targets:
            metrics.THROTTLE_LEVEL.labels(t.provider).set(0)

    async def step(self) -> ThrottleState:
        snap = await asyncio.to_thread(self.monitor.probe)
        lag = snap.total if snap is not None else None
        now = self.clock()
        new = decide(self.state, Observation(now, lag), self.limits)
        if new.level != self.state.level:
            log.warning(
                "ingest throttle level %d → %d (workers' lag %s messages)",
                self.state.level,
                new.level,
                lag,
            )
            for t in self.targets:
                metrics.THROTTLE_CHANGES.labels(t.provider, str(new.level)).inc()
        self.state = new
        for t in self.targets:
            act: Actions = actions(new.level, t.priority, self.limits)
            t.batcher.actions = act  # type: ignore[attr-defined]
            metrics.THROTTLE_LEVEL.labels(t.provider).set(new.level)
            if lag is not None:
                metrics.THROTTLE_OBSERVED_LAG.labels(t.provider).set(lag)
        self.history.append((now, new.level, lag))
        return new

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # a probe hiccup must not stop the feed
                log.exception("throttle step failed")
            await asyncio.sleep(self.interval_s)
