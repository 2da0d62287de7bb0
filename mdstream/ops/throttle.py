"""Backpressure decisions, as pure functions: lag and latency in, a throttle level out.

Level 0 publishes everything as it comes. Level 1 coalesces quotes (a quote replaces the previous
quote still buffered for its instrument; trades are never coalesced) and widens batches, which
cuts the messages the workers pay for per tick. Level 2 also pauses non-priority providers (their
ticks are counted and not published; the pipeline's failover serves the window from the priority
provider). Levels rise at once and fall one step at a time, after `hold_s` at a level and only
once lag and latency are back under the release limits (hysteresis, so it does not flap).
Whatever is not published is counted by the caller (`mdstream_throttled_ticks_total`).
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass
from typing import Any

from mdstream.providers.fields import QUOTE

MAX_LEVEL = 2


@dataclass(frozen=True)
class ThrottleLimits:
    lag_engage: int = 2_000  # raw messages behind (sum over partitions) → level 1
    lag_severe: int = 10_000  # → level 2
    lag_release: int = 500  # at or under this (and latency under its release) → step down
    latency_engage_s: float = 5.0  # tick → commit p99 → level 1 (twice this → level 2)
    latency_release_s: float = 2.0
    hold_s: float = 5.0  # minimum time at a level before stepping down
    batch_scale: tuple[int, ...] = (1, 4, 10)  # per level: batch delay and size multiplier


@dataclass(frozen=True)
class Observation:
    now: float  # seconds, monotonic
    lag: int | None  # None: the broker could not be asked
    latency_s: float | None = None  # None: not measured


@dataclass(frozen=True)
class ThrottleState:
    level: int = 0
    since: float = 0.0


@dataclass(frozen=True)
class Actions:
    coalesce_quotes: bool
    batch_scale: int
    paused: bool


def target_level(obs: Observation, limits: ThrottleLimits) -> int:
    """The level the observation alone asks for (0 when nothing is known)."""
    lag = obs.lag or 0
    latency = obs.latency_s or 0.0
    if lag >= limits.lag_severe or latency >= 2 * limits.latency_engage_s:
        return 2
    if lag >= limits.lag_engage or latency >= limits.latency_engage_s:
        return 1
    return 0


def released(obs: Observation, limits: ThrottleLimits) -> bool:
    return (obs.lag or 0) <= limits.lag_release and (obs.latency_s or 0.0) <= (
        limits.latency_release_s
    )


def decide(state: ThrottleState, obs: Observation, limits: ThrottleLimits) -> ThrottleState:
    """The next state: up at once to what the observation asks, down one level when released
    and held long enough; unchanged when the lag is unknown (no news is not good news)."""
    if obs.lag is None and obs.latency_s is None:
        return state
    want = target_level(obs, limits)
    if want > state.level:
        return ThrottleState(want, obs.now)
    if state.level > 0 and released(obs, limits) and obs.now - state.since >= limits.hold_s:
        return ThrottleState(state.level - 1, obs.now)
    return state


def actions(level: int, priority: bool, limits: ThrottleLimits) -> Actions:
    """What a provider does at `level`; priority providers are never paused."""
    level = max(0, min(level, MAX_LEVEL))
    return Actions(
        coalesce_quotes=level >= 1,
        batch_scale=limits.batch_scale[min(level, len(limits.batch_scale) - 1)],
        paused=level >= 2 and not priority,
    )


def coalesce(buffer: MutableSequence[dict[str, Any]], tick: dict[str, Any]) -> bool:
    """Append `tick`, or let it replace the buffer's last tick when both are quotes (the newer
    top of book supersedes the older). True when a quote was replaced (the caller counts it)."""
    if tick["kind"] == QUOTE and buffer and buffer[-1]["kind"] == QUOTE:
        buffer[-1] = tick
        return True
    buffer.append(tick)
    return False
