"""Table state kept in memory and written to its faust table once per key per commit.

A faust table write encodes the value and sends it to the changelog at once; the pipeline changes
an instrument's state on every message, so at dozens of messages per second per instrument
most of a worker's time went into encoding values that the next message replaced. Here the
agent reads and writes a `WriteBackTable`; just before each commit (under the processing
gate, inside the transactions the commit ends), every key changed since the last commit is
written to the table once. A crash loses only what was never committed: the table restores
from its changelog exactly the committed state, and the cache starts empty.

faust routes a table write to the partition of the "current event". A write-back happens in
the commit, outside any event, so each key remembers an event of the partition it was
written from, and that event is made current for its write.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import faust
from faust.streams import _current_event  # faust's own "current event" (see the module doc)


@contextmanager
def current_event(event: faust.EventT) -> Iterator[None]:
    """Make `event` faust's current event for the table writes in the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class WriteBackTable(MutableMapping[Any, Any]):
    """A read-through, write-back view of a faust table (one per table, per worker)."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self._values: dict[Any, Any] = {}
        self._dirty: dict[Any, faust.EventT] = {}  # key → an event of the key's partition

    def __getitem__(self, key: Any) -> Any:
        if key in self._values:
            return self._values[key]
        value = self.table[key]
        self._values[key] = value
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def set(self, key: Any, value: Any, event: faust.EventT) -> None:
        """Write `key`, which belongs to the partition `event` came from."""
        self._values[key] = value
        self._dirty[key] = event

    def __setitem__(self, key: Any, value: Any) -> None:
        event = faust.current_event()
        if event is None:
            raise RuntimeError("a table write outside an event must name it: use set()")
        self.set(key, value, event)

    def __delitem__(self, key: Any) -> None:
        raise NotImplementedError("the pipeline never deletes state keys")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def dirty(self) -> int:
        return len(self._dirty)

    def write_back(self) -> int:
        """Write every key changed since the last call to the table; returns how many."""
        dirty, self._dirty = self._dirty, {}
        for key, event in dirty.items():
            with current_event(event):
                self.table[key] = self._values[key]
        return len(dirty)

    def forget(self) -> None:
        """Drop what is cached (after a rebalance, another worker may own a key now)."""
        if self._dirty:
            raise RuntimeError(f"{len(self._dirty)} keys not written back before forgetting")
        self._values.clear()
