"""The append-only corporate-action audit trail and the dated factor table in PostgreSQL.

``corporate_action_audit``: one row per announcement received (what, from which source, when,
the outcome and its reason, the factors when applied). ``adjustment_factors``: one row per
applied event, the core's :data:`FACTOR_TABLE_SCHEMA` plus the audit key. Neither is ever
updated or deleted (a trigger refuses UPDATE, DELETE and TRUNCATE), so history can be re-read
"as known at" any time from ``known_at``:

* ``known_at`` — when the event enters point-in-time reads: the later of the ex-date and the
  announcement time (the core's :attr:`CorporateAction.known_at`); the agent stamps an
  announcement without its own time with the time the message reached Kafka.
* ``recorded_at`` — when this database wrote the row (audit only; a backfill of old events is
  recorded today but known since their announcement).

Idempotency: every announcement has an ``audit_key`` (the agent uses its Kafka topic, partition
and offset), unique in the audit table; recording a key again writes nothing and returns the
stored outcome, which is what makes a replay after a crash exactly-once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import polars as pl

from mdstream.core.corporate_actions import (
    FACTOR_TABLE_SCHEMA,
    ActionKind,
    CorporateAction,
    DecisionCode,
    DividendReference,
)
from mdstream.core.corporate_actions.announcements import (
    AppliedEvent,
    decide_announcement,
    event_key,
)
from mdstream.storage.bars import read_daily_closes

__all__ = [
    "RecordedOutcome",
    "outcome_from_row",
    "read_audit",
    "read_factor_table",
    "record_announcement",
    "record_announcements",
]


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """What the audit trail holds for one announcement (new now, or stored by an earlier run)."""

    audit_key: str
    action: CorporateAction
    outcome: DecisionCode
    reason: str
    price_factor: float | None
    volume_factor: float | None
    reference_date: date | None
    recorded_at: datetime
    isin: str | None
    new: bool  # False: the key was already recorded, nothing was written

    @property
    def applied(self) -> bool:
        return self.outcome is DecisionCode.APPLIED


def _action_from_row(row: Any) -> CorporateAction:
    return CorporateAction(
        kind=ActionKind(row["kind"]),
        instrument_id=row["instrument_id"],
        symbol=row["symbol"],
        ex_date=row["ex_date"],
        ratio=row["ratio"],
        amount=row["amount"],
        currency=row["currency"],
        record_date=row["record_date"],
        source=row["source"],
        announced_at=row["announced_at"],
        new_symbol=row["new_symbol"],
    )


def outcome_from_row(row: Any, *, new: bool) -> RecordedOutcome:
    """An audit row (``SELECT *``) as the outcome it recorded."""
    return RecordedOutcome(
        audit_key=row["audit_key"],
        action=_action_from_row(row),
        outcome=DecisionCode(row["outcome"]),
        reason=row["reason"],
        price_factor=row["price_factor"],
        volume_factor=row["volume_factor"],
        reference_date=row["reference_date"],
        recorded_at=row["recorded_at"],
        isin=row["isin"],
        new=new,
    )


async def record_announcement(
    conn: asyncpg.Connection,
    audit_key: str,
    action: CorporateAction,
    *,
    announcement_id: str | None = None,
    isin: str | None = None,
    closes: pl.DataFrame | None = None,
    dividend_reference: DividendReference = DividendReference.PREVIOUS_CLOSE,
    exchange_tz: str = "America/New_York",
) -> RecordedOutcome:
    """Decide one announcement and append its audit row (and factor row when applied), once.

    ``closes`` (``date``, ``close``) defaults to the instrument's daily bars stored in this
    database. One transaction; an advisory lock on the event serialises concurrent deciders.
    """
    key = event_key(action)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
        stored = await conn.fetchrow(
            "SELECT * FROM corporate_action_audit WHERE audit_key = $1", audit_key
        )
        if stored is not None:
            return outcome_from_row(stored, new=False)
        applied_rows = await conn.fetch(
            "SELECT * FROM corporate_action_audit WHERE event_key = $1 AND outcome = $2 "
            "ORDER BY recorded_at, audit_key",
            key,
            str(DecisionCode.APPLIED),
        )
        applied = [AppliedEvent(r["audit_key"], _action_from_row(r)) for r in applied_rows]
        if closes is None:
            closes = await read_daily_closes(
                conn, action.instrument_id, until=action.ex_date, limit=2, exchange_tz=exchange_tz
            )
        result = decide_announcement(action, applied, closes, dividend_reference=dividend_reference)
        decision = result.decisions[0]
        factor = result.table.row(0, named=True) if result.table.height else None
        row = await conn.fetchrow(
            """
            INSERT INTO corporate_action_audit (
                audit_key, announcement_id, event_key, instrument_id, symbol, kind, ex_date,
                record_date, ratio, amount, currency, new_symbol, source, announced_at, known_at,
                outcome, reason, price_factor, volume_factor, reference_date, reference_close, isin
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                      $18, $19, $20, $21, $22)
            RETURNING *
            """,
            audit_key,
            announcement_id,
            key,
            action.instrument_id,
            action.symbol,
            str(action.kind),
            action.ex_date,
            action.record_date,
            action.ratio,
            action.amount,
            action.currency,
            action.new_symbol,
            action.source,
            action.announced_at,
            action.known_at,
            str(decision.code),
            decision.reason,
            factor["price_factor"] if factor else None,
            factor["volume_factor"] if factor else None,
            factor["reference_date"] if factor else None,
            factor["reference_close"] if factor else None,
            isin,
        )
        if factor is not None:
            await conn.execute(
                f"INSERT INTO adjustment_factors (audit_key, {', '.join(FACTOR_TABLE_SCHEMA)}) "
                f"VALUES ({', '.join(f'${i}' for i in range(1, len(FACTOR_TABLE_SCHEMA) + 2))})",
                audit_key,
                *(factor[c] for c in FACTOR_TABLE_SCHEMA),
            )
        return outcome_from_row(row, new=True)


async def record_announcements(
    conn: asyncpg.Connection,
    actions: Sequence[CorporateAction],
    *,
    key_prefix: str,
    closes: pl.DataFrame | None = None,
    dividend_reference: DividendReference = DividendReference.PREVIOUS_CLOSE,
    exchange_tz: str = "America/New_York",
) -> list[RecordedOutcome]:
    """A backfill: each action through :func:`record_announcement`, in order, keyed
    ``<key_prefix>:<n>`` (re-running the same backfill writes nothing)."""
    return [
        await record_announcement(
            conn,
            f"{key_prefix}:{n}",
            action,
            closes=closes,
            dividend_reference=dividend_reference,
            exchange_tz=exchange_tz,
        )
        for n, action in enumerate(actions)
    ]


async def read_factor_table(
    conn: asyncpg.Connection, instrument_id: str | Sequence[str]
) -> pl.DataFrame:
    """Every factor row of one instrument (:data:`FACTOR_TABLE_SCHEMA`), stored under any of the
    given keys; point-in-time filtering by ``known_at`` is the core's
    (``adjust(..., as_of=...)``), so it has one definition."""
    rows = await conn.fetch(
        f"SELECT {', '.join(FACTOR_TABLE_SCHEMA)} FROM adjustment_factors "
        "WHERE instrument_id = ANY($1::text[]) ORDER BY ex_date, audit_key",
        [instrument_id] if isinstance(instrument_id, str) else list(instrument_id),
    )
    return pl.DataFrame([tuple(r) for r in rows], schema=FACTOR_TABLE_SCHEMA, orient="row")


async def read_audit(conn: asyncpg.Connection, instrument_id: str) -> pl.DataFrame:
    """The audit trail of one instrument, oldest first."""
    rows = await conn.fetch(
        "SELECT audit_key, announcement_id, kind, ex_date, ratio, amount, source, known_at, "
        "outcome, reason, price_factor, volume_factor, recorded_at FROM corporate_action_audit "
        "WHERE instrument_id = $1 ORDER BY recorded_at, audit_key",
        instrument_id,
    )
    return pl.DataFrame([dict(r) for r in rows]) if rows else pl.DataFrame()
