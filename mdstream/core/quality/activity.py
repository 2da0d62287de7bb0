"""MISSING_DATA for an instrument: silence judged against the exchange calendar and the
instrument's own normal activity (a quiet instrument is not a gap; a closed market is not one).

Kept per partition in its stream-clock state (``clock["activity"][symbol] = [last event time,
typical inter-arrival ns or None, updates seen, raised-since or None]``), because a silent
instrument sends nothing that would trigger a check: the partition's stream time, advanced by
its other instruments, does. A partition whose only instrument falls silent cannot tell silence
from an idle feed; the STALE_DATA checks of other feeds and SOURCE_UNAVAILABLE cover that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mdstream.core.quality.alerts import ALL_SOURCES, CLEARED, RAISED, alert
from mdstream.core.quality.calendar import sessions
from mdstream.core.quality.config import QualityConfig
from mdstream.core.quality.reliability import compact

LAST, TYPICAL, UPDATES, SINCE = range(4)
#: Updates needed before an instrument's normal activity is known well enough to judge.
MIN_UPDATES = 20
_EWMA = 0.1


def observe(
    clock: dict[str, Any], symbol: str, now: int, ticks: int, qcfg: QualityConfig
) -> list[dict[str, Any]]:
    """The instrument updated up to event time `now` with `ticks` usable ticks."""
    activity = clock.setdefault("activity", {})
    entry = activity.get(symbol)
    if entry is None:
        activity[symbol] = [now, None, 1, None]
        return []
    out = []
    if entry[SINCE] is not None:
        silent = (now - entry[LAST]) / 1e9
        out.append(
            alert(
                "MISSING_DATA", "HIGH", CLEARED, ALL_SOURCES, symbol,
                f"{symbol} is updating again after {silent:.0f}s of silence", now,
                entry[SINCE], last_update=now,
            )
        )  # fmt: skip
        entry[SINCE] = None
    elif now > entry[LAST]:
        # The outage itself does not teach what normal activity is.
        gap = (now - entry[LAST]) / max(ticks, 1)
        entry[TYPICAL] = compact(
            gap if entry[TYPICAL] is None else (1 - _EWMA) * entry[TYPICAL] + _EWMA * gap
        )
    entry[LAST] = max(entry[LAST], now)
    entry[UPDATES] += 1
    return out


def threshold_ns(typical: float, qcfg: QualityConfig) -> float:
    return max(qcfg.gap_factor * typical, qcfg.min_gap_ns)


def scan(clock: dict[str, Any], before: int, qcfg: QualityConfig) -> list[dict[str, Any]]:
    """When stream time crosses a check boundary: every instrument of the partition silent
    (during the session) for longer than its threshold raises MISSING_DATA once."""
    t = clock["t"]
    if t // qcfg.gap_check_every_ns == before // qcfg.gap_check_every_ns:
        return []
    cal = sessions(qcfg.calendar)
    idx = int(cal.session_index(np.array([t]))[0])
    if idx < 0:
        return []
    session_open = int(cal.opens[idx])
    out = []
    for symbol, entry in clock.get("activity", {}).items():
        if entry[SINCE] is not None or entry[TYPICAL] is None or entry[UPDATES] < MIN_UPDATES:
            continue
        silent = t - max(entry[LAST], session_open)
        limit = threshold_ns(entry[TYPICAL], qcfg)
        if silent > limit:
            entry[SINCE] = entry[LAST]
            out.append(
                alert(
                    "MISSING_DATA", "HIGH", RAISED, ALL_SOURCES, symbol,
                    f"no data for {symbol} from any provider for {silent / 1e9:.0f}s of "
                    f"session time (normally every {entry[TYPICAL] / 1e9:.3g}s)",
                    t, entry[LAST], last_update=entry[LAST],
                    expected_frequency=f"{entry[TYPICAL] / 1e9:.3g}s",
                    observed=silent / 1e9, reference=limit / 1e9,
                )
            )  # fmt: skip
    return out
