"""Provider reliability per (instrument, provider): event-time EWMAs of uptime, error rate,
latency and agreement with consensus, and the SLA figures derived from them.

Accumulators decay with a half-life in event time (not wall time: the step must stay a pure
function of its input). reliability = 0.3 uptime + 0.3 (1 - error rate) + 0.1 latency score
+ 0.3 agreement; it weights the provider in the consensus.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_ZERO = {"up": 0.0, "span": 0.0, "ticks": 0.0, "errors": 0.0, "lat": 0.0, "agree": 0.0, "n": 0.0}
#: Weight a provider gets in the consensus before anything is known about it, and at least.
PRIOR = 1.0
FLOOR = 0.05


def new() -> dict[str, Any]:
    return {"t": None, **_ZERO}


def compact(x: float) -> float:
    """Six significant digits: the state is JSON in a changelog on every batch, and a float's
    full repr would triple its size for no meaningful precision."""
    return float(f"{x:.6g}")


def _compact_all(rel: dict[str, Any]) -> None:
    for k in _ZERO:
        rel[k] = compact(rel[k])


def _decay(rel: dict[str, Any], now: int, half_life_ns: int) -> float:
    """Decay every accumulator to `now`; returns the event time elapsed since the last update."""
    if rel["t"] is None:
        rel["t"] = now
        return 0.0
    dt = max(0, now - rel["t"])
    if dt:
        f = 0.5 ** (dt / half_life_ns)
        for k in _ZERO:
            rel[k] *= f
        rel["t"] = now
    return float(dt)


def observe_time(rel: dict[str, Any], now: int, up: bool, half_life_ns: int) -> None:
    """Time since the last update counts as up (fresh) or down (stale)."""
    dt = _decay(rel, now, half_life_ns)
    rel["span"] += dt
    if up:
        rel["up"] += dt
    _compact_all(rel)


def observe_ticks(
    rel: dict[str, Any], received: int, rejected: int, latency_ms_sum: float,
    agreement_sum: float, judged: int,
) -> None:  # fmt: skip
    rel["ticks"] += received
    rel["errors"] += rejected
    rel["lat"] += latency_ms_sum
    rel["agree"] += agreement_sum
    rel["n"] += judged
    _compact_all(rel)


def figures(rel: dict[str, Any], latency_good_ms: float, latency_bad_ms: float) -> dict[str, float]:
    """The SLA figures: uptime, error rate, mean latency (ms), agreement, reliability."""
    uptime = rel["up"] / rel["span"] if rel["span"] > 0 else 1.0
    error_rate = rel["errors"] / rel["ticks"] if rel["ticks"] > 0 else 0.0
    accepted = rel["ticks"] - rel["errors"]
    latency = rel["lat"] / accepted if accepted > 0 else 0.0
    agreement = rel["agree"] / rel["n"] if rel["n"] > 0 else 1.0
    late = (latency - latency_good_ms) / (latency_bad_ms - latency_good_ms)
    lat_score = 1.0 - min(1.0, max(0.0, late))
    reliability = 0.3 * uptime + 0.3 * (1.0 - error_rate) + 0.1 * lat_score + 0.3 * agreement
    return {
        "uptime": uptime,
        "error_rate": error_rate,
        "latency_ms": latency,
        "agreement": agreement,
        "reliability": reliability,
    }


def weight(rel: dict[str, Any] | None, latency_good_ms: float, latency_bad_ms: float) -> float:
    if rel is None or rel["t"] is None:
        return PRIOR
    return max(FLOOR, figures(rel, latency_good_ms, latency_bad_ms)["reliability"])


def sla_by_provider(
    instruments: Mapping[str, Mapping[str, Any]], latency_good_ms: float, latency_bad_ms: float
) -> dict[str, dict[str, float]]:
    """Per provider, its SLA figures over every instrument it covers: the instruments' decayed
    accumulators summed (so busy instruments weigh more), then `figures`."""
    total: dict[str, dict[str, Any]] = {}
    for inst in instruments.values():
        for name, p in (inst or {}).get("providers", {}).items():
            rel = p.get("rel")
            if not rel:
                continue
            acc = total.setdefault(name, {"t": 0, **_ZERO, "instruments": 0})
            for k in _ZERO:
                acc[k] += rel[k]
            acc["instruments"] += 1
    return {
        name: {
            **figures(acc, latency_good_ms, latency_bad_ms),
            "instruments": acc["instruments"],
            "ticks": acc["ticks"],
        }
        for name, acc in sorted(total.items())
    }
