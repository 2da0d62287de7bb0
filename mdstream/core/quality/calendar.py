"""Exchange sessions (exchange_calendars), as sorted int64 ns arrays for vectorised lookups."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import exchange_calendars as xcals
import numpy as np

# Fixed bounds: the library's default range moves with the wall clock.
_START, _END = "2000-01-03", "2030-12-31"


@dataclass
class Sessions:
    opens: np.ndarray  # int64 ns UTC, ascending
    closes: np.ndarray
    _last: tuple[int, int] = (0, 0)  # the session found last: most batches fall in it again

    def same_session(self, first: int, last: int) -> bool:
        """Both times inside one session (first <= last)."""
        lo, hi = self._last
        if not lo <= first < hi:
            idx = int(self.session_index(np.array([first]))[0])
            if idx < 0:
                return False
            lo, hi = int(self.opens[idx]), int(self.closes[idx])
            self._last = (lo, hi)
        return lo <= last < hi

    def session_index(self, ts: np.ndarray) -> np.ndarray:
        """Per timestamp, the index of the session it falls in, or -1 outside every session."""
        idx = np.searchsorted(self.opens, ts, side="right") - 1
        inside = (idx >= 0) & (ts < self.closes[np.maximum(idx, 0)])
        return np.where(inside, idx, -1)


@lru_cache(maxsize=8)
def sessions(calendar: str = "XNYS") -> Sessions:
    cal = xcals.get_calendar(calendar, start=_START, end=_END)
    schedule = cal.schedule
    return Sessions(
        schedule["open"].dt.tz_convert(None).to_numpy().astype(np.int64),
        schedule["close"].dt.tz_convert(None).to_numpy().astype(np.int64),
    )
