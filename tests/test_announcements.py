"""Announcements one at a time (pure): parsing the contract, streaming outcomes, the notice."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pytest

from mdstream.core.contracts import ANNOUNCEMENT, ContractSet, DecodeError
from mdstream.core.corporate_actions import ActionKind, CorporateActionError, DecisionCode
from mdstream.core.corporate_actions.announcements import (
    AppliedEvent,
    action_from_record,
    applied_event_record,
    decide_announcement,
    decode_announcement,
)

RECEIVED = datetime(2024, 1, 10, 12, tzinfo=UTC)
CLOSES = pl.DataFrame({"date": [date(2024, 1, 2), date(2024, 1, 3)], "close": [50.0, 40.0]})


def _record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "announcementId": "feed-a/1",
        "announced_at": None,
        "source": "feed-a",
        "instrument_id": "X",
        "symbol": "X",
        "isin": None,
        "type": "CASH_DIVIDEND",
        "ratio": None,
        "amount": 1.0,
        "currency": "USD",
        "ex_date": "2024-01-03",
        "record_date": None,
        "new_symbol": None,
    }
    record.update(overrides)
    return record


def test_record_to_action_and_announcement_time() -> None:
    got = action_from_record(_record(), received_at=RECEIVED)
    assert got.action.kind is ActionKind.CASH_DIVIDEND and got.action.ex_date == date(2024, 1, 3)
    assert got.action.announced_at == RECEIVED  # no provider time: when we learned it
    assert got.action.known_at == RECEIVED
    ns = int(datetime(2023, 12, 1, tzinfo=UTC).timestamp()) * 10**9
    early = action_from_record(_record(announced_at=ns), received_at=RECEIVED).action
    assert early.known_at == datetime(2024, 1, 3, tzinfo=UTC)  # the ex-date is later


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"type": "BONUS_ISSUE"}, "unknown corporate action type 'BONUS_ISSUE'"),
        ({"ex_date": "03/01/2024"}, "ex_date is not an ISO date"),
        ({"record_date": "tomorrow"}, "record_date is not an ISO date"),
        ({"currency": None}, "currency is required"),
        ({"announcementId": ""}, "announcementId is required"),
        ({"type": "STOCK_SPLIT", "amount": None, "currency": None, "ratio": 0.5}, "REVERSE_SPLIT"),
    ],
)
def test_malformed_records_raise_with_the_reason(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(CorporateActionError, match=message):
        action_from_record(_record(**overrides), received_at=RECEIVED)


def test_decode_rejects_other_contracts() -> None:
    contracts = ContractSet.load()
    ok = decode_announcement(
        contracts, contracts.encode(ANNOUNCEMENT, _record()), received_at=RECEIVED
    )
    assert ok.announcement_id == "feed-a/1"
    dead = contracts.encode(
        "DeadLetter", {"timestamp": 0, "stage": "x", "reason": "y", "payload": b""}
    )
    with pytest.raises(DecodeError, match="where CorporateActionAnnouncement was expected"):
        decode_announcement(contracts, dead, received_at=RECEIVED)
    with pytest.raises(DecodeError):
        decode_announcement(contracts, None, received_at=RECEIVED)


def test_streaming_outcomes() -> None:
    first = action_from_record(_record(), received_at=RECEIVED).action
    applied = decide_announcement(first, [], CLOSES)
    assert applied.decisions[0].code is DecisionCode.APPLIED
    assert applied.table.row(0, named=True)["price_factor"] == pytest.approx(1 - 1 / 50)
    prior = [AppliedEvent("kafka:t:0:0", first)]
    same = action_from_record(_record(source="feed-b"), received_at=RECEIVED).action
    other = action_from_record(_record(amount=1.5), received_at=RECEIVED).action
    later_ex = action_from_record(_record(ex_date="2024-01-04"), received_at=RECEIVED).action
    duplicate = decide_announcement(same, prior, CLOSES)
    conflict = decide_announcement(other, prior, CLOSES)
    assert duplicate.decisions[0].code is DecisionCode.DUPLICATE and duplicate.table.height == 0
    assert conflict.decisions[0].code is DecisionCode.CONFLICT and conflict.table.height == 0
    assert "kafka:t:0:0" in conflict.decisions[0].reason
    # another ex-date is another event: the prior one does not matter
    assert decide_announcement(later_ex, prior, CLOSES).decisions[0].code is DecisionCode.APPLIED


def test_applied_event_is_deterministic() -> None:
    action = action_from_record(
        _record(
            type="STOCK_SPLIT", amount=None, currency=None, ratio=4.0, record_date="2024-01-02"
        ),
        received_at=RECEIVED,
    ).action
    decided = datetime(2024, 1, 10, 12, 0, 0, 123456, tzinfo=UTC)
    kwargs: dict[str, Any] = {
        "price_factor": 0.25,
        "volume_factor": 4.0,
        "reference_date": None,
        "decided_at": decided,
    }
    event = applied_event_record("kafka:t:1:9", action, **kwargs)
    assert event == applied_event_record("kafka:t:1:9", action, **kwargs)
    assert event["eventId"] != applied_event_record("kafka:t:1:10", action, **kwargs)["eventId"]
    assert event["timestamp"] == 1_704_888_000_123_456_000
    assert (
        event["action"]["type"] == "STOCK_SPLIT" and event["action"]["record_date"] == "2024-01-02"
    )
    # no bar known before the ex-date: the range ends the day before it
    assert event["adjustments"]["affected_date_range"] == {"start": None, "end": "2024-01-02"}
    ContractSet.load().encode("CorporateActionAppliedEvent", event)  # valid against the contract
