"""Bounded label values (Prometheus series are per label value: free text would explode them)."""

from __future__ import annotations

import re

_NUMBERS = re.compile(r"[-+]?\d[\d.,e+-]*")
_SPACES = re.compile(r"\s+")


def reason_class(reason: str, limit: int = 48) -> str:
    """A dead-letter reason without its particulars: the text before the first ':' with numbers
    replaced by N, e.g. "price -1.0 is not positive" → "price N is not positive"."""
    head = reason.split(":", 1)[0]
    head = _SPACES.sub(" ", _NUMBERS.sub("N", head)).strip()
    return head[:limit] or "unknown"
