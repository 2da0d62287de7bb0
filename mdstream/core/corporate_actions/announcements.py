"""Corporate-action announcements as they arrive, one at a time: parse the contract record,
decide against the events already applied, and build the downstream notice.

Pure (no I/O): the storage edge passes in what it read (events already applied for the same
(instrument, kind, ex-date), the raw closes around the ex-date) and writes what comes out.

Streaming outcomes (the core's :func:`compute_factors` decides a whole batch at once; here the
first announcement of an event may already be applied and announced downstream):

* same terms as an applied event → DUPLICATE, nothing written to the factor table;
* different terms from an applied event → CONFLICT, not applied; the applied event stands
  (the factor table is append-only and consumers were notified) until an operator corrects it;
* otherwise the core decides (applied, no reference close, non-positive factor, no price effect).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from mdstream.core.contracts import ANNOUNCEMENT, ContractSet
from mdstream.core.corporate_actions import (
    FACTOR_TABLE_SCHEMA,
    ActionKind,
    CorporateAction,
    CorporateActionError,
    DecisionCode,
    DividendReference,
    FactorDecision,
    FactorResult,
    compute_factors,
)

__all__ = [
    "ANNOUNCEMENT_NAMESPACE",
    "Announcement",
    "AppliedEvent",
    "action_from_record",
    "applied_event_record",
    "decide_announcement",
    "decode_announcement",
    "event_key",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: uuid5 namespace of CorporateActionAppliedEvent ids (derived from the audit key: a replay
#: re-emits the same id).
ANNOUNCEMENT_NAMESPACE = uuid.UUID("1c0f4f0e-7b1d-5b8e-9a59-3e1a1d3c0a11")


@dataclass(frozen=True, slots=True)
class Announcement:
    announcement_id: str
    action: CorporateAction
    isin: str | None = None


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """An event already in the factor table, as the storage edge read it back."""

    audit_key: str
    action: CorporateAction


def event_key(action: CorporateAction) -> str:
    """What makes two announcements the same event (the core's grouping key)."""
    return f"{action.instrument_id}|{action.kind}|{action.ex_date.isoformat()}"


def _parse_date(value: object, name: str) -> date:
    if not isinstance(value, str):
        raise CorporateActionError(f"{name} must be an ISO yyyy-mm-dd string, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CorporateActionError(f"{name} is not an ISO date: {value!r}") from None


def action_from_record(record: Mapping[str, Any], *, received_at: datetime) -> Announcement:
    """A ``CorporateActionAnnouncement`` record → validated action; raises CorporateActionError.

    ``announced_at`` (epoch ns) is when the provider published it; when absent, ``received_at``
    (when we learned it) stands in, so a point-in-time read never sees an event before we had it.
    """
    kind_text = str(record.get("type", ""))
    try:
        kind = ActionKind(kind_text.lower())
    except ValueError:
        raise CorporateActionError(f"unknown corporate action type {kind_text!r}") from None
    announced_ns = record.get("announced_at")
    announced_at = (
        datetime.fromtimestamp(announced_ns / 1e9, UTC) if announced_ns is not None else received_at
    )
    record_date = record.get("record_date")
    action = CorporateAction(
        kind=kind,
        instrument_id=str(record.get("instrument_id") or ""),
        symbol=str(record.get("symbol") or ""),
        ex_date=_parse_date(record.get("ex_date"), "ex_date"),
        ratio=record.get("ratio"),
        amount=record.get("amount"),
        currency=record.get("currency"),
        record_date=None if record_date is None else _parse_date(record_date, "record_date"),
        source=str(record.get("source") or ""),
        announced_at=announced_at,
        new_symbol=record.get("new_symbol"),
    )
    announcement_id = str(record.get("announcementId") or "")
    if not announcement_id:
        raise CorporateActionError("announcementId is required")
    return Announcement(announcement_id, action, record.get("isin"))


def decode_announcement(
    contracts: ContractSet, value: bytes | None, *, received_at: datetime
) -> Announcement:
    """Framed Avro bytes → announcement; raises DecodeError or CorporateActionError (whose
    message is the dead-letter reason)."""
    _, record = contracts.decode(value or b"", expected=ANNOUNCEMENT)
    return action_from_record(record, received_at=received_at)


def _same_terms(a: CorporateAction, b: CorporateAction) -> bool:
    for x, y in zip(a.terms(), b.terms(), strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


def decide_announcement(
    action: CorporateAction,
    applied: Sequence[AppliedEvent],
    closes: pl.DataFrame,
    *,
    dividend_reference: DividendReference = DividendReference.PREVIOUS_CLOSE,
) -> FactorResult:
    """One decision (and at most one factor row) for ``action`` given the applied events of the
    same (instrument, kind, ex-date) and the instrument's raw daily closes (``date``, ``close``;
    the last one before the ex-date is enough)."""
    same = [e for e in applied if event_key(e.action) == event_key(action)]
    if same:
        first = same[0]
        if _same_terms(first.action, action):
            code, reason = (
                DecisionCode.DUPLICATE,
                f"duplicate of the applied announcement {first.audit_key} "
                f"({first.action.source or '?'}); nothing new applied",
            )
        else:
            code, reason = (
                DecisionCode.CONFLICT,
                f"conflicts with the applied announcement {first.audit_key} "
                f"(terms {first.action.terms()} vs {action.terms()}); not applied, the applied "
                "event stands until an operator corrects it",
            )
        empty = pl.DataFrame(schema=FACTOR_TABLE_SCHEMA)
        return FactorResult(empty, (FactorDecision(action, False, reason, code),))
    return compute_factors(
        closes.select("date", "close"), [action], dividend_reference=dividend_reference
    )


def applied_event_record(
    audit_key: str,
    action: CorporateAction,
    *,
    price_factor: float,
    volume_factor: float,
    reference_date: date | None,
    decided_at: datetime,
    isin: str | None = None,
) -> dict[str, Any]:
    """The ``CorporateActionAppliedEvent`` for an applied announcement.

    Deterministic in its inputs (the id derives from the audit key, the timestamp is the stored
    decision time), so a replay after a crash emits the very same record. The affected range is
    every bar before the ex-date: open start, end = the last session before it (its reference
    date) or the day before the ex-date when no bar is known.
    """
    end = reference_date or action.ex_date - timedelta(days=1)
    return {
        "eventId": str(uuid.uuid5(ANNOUNCEMENT_NAMESPACE, audit_key)),
        "timestamp": (decided_at - _EPOCH) // timedelta(microseconds=1) * 1000,
        "instrument": {"symbol": action.symbol, "isin": isin},
        "action": {
            "type": str(action.kind).upper(),
            "ratio": action.ratio,
            "amount": action.amount,
            "currency": action.currency,
            "ex_date": action.ex_date.isoformat(),
            "record_date": action.record_date.isoformat() if action.record_date else None,
            "source": action.source or None,
        },
        "adjustments": {
            "price_adjustment_factor": price_factor,
            "volume_adjustment_factor": volume_factor,
            "affected_date_range": {"start": None, "end": end.isoformat()},
        },
    }
