"""The write-back table: state reaches the faust table once per key per commit, from the
partition each key was written from, and nothing is forgotten before it is written."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import pytest

from mdstream.bus.writeback import WriteBackTable, current_event


class RecordingTable(dict):
    """Stands for a faust Table: records each write with the partition faust would route it to."""

    def __init__(self, **items: Any) -> None:
        super().__init__(items)
        self.writes: list[tuple[Any, Any, int]] = []

    def __setitem__(self, key: Any, value: Any) -> None:
        event = faust.current_event()
        assert event is not None, "a table write outside an event"
        self.writes.append((key, value, event.message.partition))
        super().__setitem__(key, value)


class _Event:
    """What faust's routing reads of an event: its message's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _event(partition: int) -> Any:
    return _Event(partition)


def test_each_changed_key_is_written_once_per_commit_with_its_partition() -> None:
    table = RecordingTable(old="committed")
    state = WriteBackTable(table)
    assert state.get("old") == "committed" and state.get("missing", 7) == 7
    for n in range(50):  # many messages between two commits
        state.set("AAPL", {"n": n}, _event(1))
        state.set("MSFT", {"n": n}, _event(3))
    assert table.writes == [] and state["AAPL"] == {"n": 49}
    assert state.write_back() == 2
    assert sorted(table.writes) == [("AAPL", {"n": 49}, 1), ("MSFT", {"n": 49}, 3)]
    assert state.write_back() == 0  # nothing changed since
    assert len(table.writes) == 2


def test_forgetting_unwritten_state_is_refused_and_written_state_is_reread() -> None:
    table = RecordingTable()
    state = WriteBackTable(table)
    state.set("AAPL", 1, _event(0))
    with pytest.raises(RuntimeError, match="1 keys not written back"):
        state.forget()
    state.write_back()
    state.forget()
    dict.__setitem__(table, "AAPL", 2)  # another worker's value, after a rebalance
    assert state["AAPL"] == 2


def test_a_plain_write_takes_the_current_event_and_none_outside_is_refused() -> None:
    table = RecordingTable()
    state = WriteBackTable(table)
    with pytest.raises(RuntimeError, match="outside an event"):
        state["AAPL"] = 1
    with current_event(_event(2)):
        state["AAPL"] = 1
    state.write_back()
    assert table.writes == [("AAPL", 1, 2)]
