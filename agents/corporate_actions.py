"""Corporate-action announcements → audit trail + factor table (PostgreSQL) →
CorporateActionAppliedEvent, exactly once. Runs only when ``MDSTREAM_POSTGRES_DSN`` is set.

Kafka and PostgreSQL commit separately, so each side is made exactly-once on its own:

* PostgreSQL: each announcement is recorded under the key ``kafka:<topic>:<partition>:<offset>``
  in one database transaction; a replay (the Kafka transaction aborted after the database
  committed, e.g. a SIGKILL) finds the key and writes nothing, returning the stored outcome.
* Kafka: the applied event and any dead letter go out in the source partition's transaction
  with the consumed offset (`process_exactly_once`); the event is built from the stored outcome
  (id from the audit key, timestamp = the stored decision time), so a replay emits the same
  record that the aborted transaction would have.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import asyncpg
import faust

from mdstream.app import (
    announcements_topic,
    app,
    contracts,
    corporate_actions_topic,
    dead_letter_topic,
)
from mdstream.bus.eos import process_exactly_once
from mdstream.core.contracts import CORPORATE_ACTION, DEAD_LETTER, DecodeError
from mdstream.core.corporate_actions import CorporateActionError
from mdstream.core.corporate_actions.announcements import applied_event_record, decode_announcement
from mdstream.core.processor import dead_letter
from mdstream.settings import settings
from mdstream.storage.corporate_actions import record_announcement
from mdstream.storage.postgres import create_pool

log = logging.getLogger(__name__)
_pool: asyncpg.Pool | None = None


async def _database() -> asyncpg.Pool:
    global _pool
    if _pool is None:
        _pool = await create_pool(settings.postgres_dsn, schema=settings.postgres_schema)
    return _pool


async def _handle(event: faust.EventT) -> None:
    msg = event.message
    try:
        announcement = decode_announcement(
            contracts, msg.value, received_at=datetime.fromtimestamp(msg.timestamp, UTC)
        )
    except (DecodeError, CorporateActionError) as exc:
        record = dead_letter(
            "corporate_action",
            str(exc),
            bytes(msg.value or b""),
            emitted_ns=time.time_ns(),
            key=msg.key,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
        )
        await dead_letter_topic.send(
            key=msg.key, value=contracts.encode(DEAD_LETTER, record), partition=msg.partition
        )
        return
    pool = await _database()
    async with pool.acquire() as conn:
        outcome = await record_announcement(
            conn,
            f"kafka:{msg.topic}:{msg.partition}:{msg.offset}",
            announcement.action,
            announcement_id=announcement.announcement_id,
            isin=announcement.isin,
        )
    if not outcome.new:
        log.info("%s was recorded before (a replay): re-emitting its outcome", outcome.audit_key)
    if not outcome.applied:
        return  # duplicate, conflict, no reference close...: the audit trail says why
    assert outcome.price_factor is not None and outcome.volume_factor is not None
    applied = applied_event_record(
        outcome.audit_key,
        outcome.action,
        price_factor=outcome.price_factor,
        volume_factor=outcome.volume_factor,
        reference_date=outcome.reference_date,
        decided_at=outcome.recorded_at,
        isin=outcome.isin,
    )
    await corporate_actions_topic.send(
        key=outcome.action.symbol.encode(),
        value=contracts.encode(CORPORATE_ACTION, applied),
        partition=msg.partition,
    )


if settings.postgres_dsn:

    @app.agent(announcements_topic, concurrency=1)
    async def apply_corporate_actions(stream: faust.StreamT) -> None:
        await process_exactly_once(app, stream, _handle)
