"""Liveness and readiness as pure decisions over what a process last observed.

`/healthz` (liveness: restart me if false) fails only when the process is stalled: there is lag on
partitions it owns and its committed offsets have not moved for `stall_s`. `/readyz` (send me
work / count me in) also needs the broker reachable (the last lag probe succeeded recently) and a
finished assignment. An idle process with no lag is healthy however long it idles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class ProgressTracker:
    """Per partition: the last committed offset seen and when it last moved (monotonic s)."""

    stall_s: float = 30.0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    moved_at: dict[tuple[str, int], float] = field(default_factory=dict)

    def observe(self, committed: Mapping[tuple[str, int], int], now: float) -> None:
        for tp, offset in committed.items():
            if self.committed.get(tp) != offset:
                self.committed[tp] = offset
                self.moved_at[tp] = now

    def stalled(
        self, lag: Mapping[tuple[str, int], int], owned: set[tuple[str, int]] | None, now: float
    ) -> list[tuple[str, int]]:
        """Partitions (owned ones, when known) with lag whose commits have not moved for stall_s."""
        return sorted(
            tp
            for tp, behind in lag.items()
            if behind > 0
            and (owned is None or tp in owned)
            and now - self.moved_at.get(tp, now) >= self.stall_s
        )


@dataclass(frozen=True)
class HealthReport:
    live: bool
    ready: bool
    checks: dict[str, str]

    def as_json(self) -> dict[str, object]:
        return {"live": self.live, "ready": self.ready, "checks": self.checks}


def assess(
    *,
    now: float,
    broker_ok_at: float | None,
    broker_timeout_s: float,
    assigned: bool,
    stalled: list[tuple[str, int]],
    extra: Mapping[str, bool] | None = None,
) -> HealthReport:
    """Combine the observations; `extra` are further readiness checks (e.g. postgres: True)."""
    checks: dict[str, str] = {}
    broker = broker_ok_at is not None and now - broker_ok_at <= broker_timeout_s
    checks["broker"] = "ok" if broker else "unreachable"
    checks["assignment"] = "ok" if assigned else "pending"
    checks["progress"] = (
        "ok" if not stalled else "stalled: " + ", ".join(f"{t}[{p}]" for t, p in stalled)
    )
    for name, ok in (extra or {}).items():
        checks[name] = "ok" if ok else "down"
    live = not stalled
    ready = live and broker and assigned and all((extra or {}).values())
    return HealthReport(live, ready, checks)
