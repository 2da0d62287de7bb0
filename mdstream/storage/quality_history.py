"""Quality history and SLA figures in PostgreSQL, and a bar's lineage down to archive objects.

Every stored bar's quality (the NormalizedMarketDataEvent's ``quality_metrics``), the provider
that made it, when it was emitted and its ``lineage`` (raw partition, offset range, batches,
ticks, checks, flags, model) go to ``quality_history``, written by the bar sink in the same
transaction as the bar (so it is exactly once, like the bar). From there:

- :func:`read_quality`: the scores per provider/instrument/interval over a time range;
- :func:`sla`: per provider and instrument per day (or hour): bars, availability (the share of
  the instrument's windows this provider made), completeness, mean quality score, and
  emission latency percentiles (emitted - window end, ms);
- :func:`bar_lineage`: for a bar, the archive's manifests and objects that hold its raw
  messages, and those messages (which :func:`mdstream.core.quality.lineage.trace` turns into
  the tick-level verdicts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import polars as pl

from mdstream.core.processor import RawMessage
from mdstream.storage.archive import Manifest, read_manifests
from mdstream.storage.objectstore import ObjectStore

__all__ = ["bar_lineage", "quality_row", "read_quality", "record_quality", "sla"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

QUALITY_COLUMNS = (
    "instrument", "interval", "window_start", "revision", "provider", "window_end",
    "emitted_at", "completeness", "accuracy", "timeliness", "reliability", "consistency",
    "quality_score", "checks_passed", "flags", "quality_model", "raw_partition",
    "raw_offset_first", "raw_offset_last", "raw_batches", "raw_ticks", "event_id",
)  # fmt: skip


def _at(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def quality_row(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """A NormalizedMarketDataEvent → a row in :data:`QUALITY_COLUMNS` order (pure)."""
    q, lineage = event["quality_metrics"], event.get("lineage") or {}
    instrument = event["instrument"]
    return (
        instrument.get("instrument_id") or instrument["symbol"],
        event["interval"],
        _at(event["window_start"]),
        int(event.get("revision") or 0),
        (event.get("sources") or [""])[0],
        _at(event["window_end"]),
        _at(event["timestamp"]),
        q["completeness"],
        q["accuracy_score"],
        q["timeliness_score"],
        q["source_reliability"],
        q.get("consistency_score", 1.0),
        q.get("quality_score"),
        list(lineage.get("checks_passed") or []),
        list(lineage.get("flags") or []),
        lineage.get("quality_model"),
        lineage.get("raw_partition"),
        lineage.get("raw_offset_first"),
        lineage.get("raw_offset_last"),
        int(lineage.get("raw_batches") or 0),
        int(lineage.get("raw_ticks") or 0),
        event.get("eventId"),
    )


async def record_quality(conn: asyncpg.Connection, events: Iterable[Mapping[str, Any]]) -> int:
    """Append the events' quality rows (a bar already recorded is left alone); returns rows new."""
    rows = [quality_row(e) for e in events]
    if not rows:
        return 0
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staging_quality "
            "(LIKE quality_history INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.execute("TRUNCATE staging_quality")
        await conn.copy_records_to_table("staging_quality", records=rows, columns=QUALITY_COLUMNS)
        status = await conn.execute(
            f"INSERT INTO quality_history ({', '.join(QUALITY_COLUMNS)}) "
            f"SELECT {', '.join(QUALITY_COLUMNS)} FROM staging_quality ON CONFLICT DO NOTHING"
        )
    return int(status.rsplit(" ", 1)[-1])


def _frame(rows: Sequence[asyncpg.Record]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame([dict(r) for r in rows], infer_schema_length=None)


async def read_quality(
    conn: asyncpg.Connection | asyncpg.Pool,
    start: datetime,
    end: datetime,
    *,
    instruments: Sequence[str] | None = None,
    providers: Sequence[str] | None = None,
    interval: str = "1m",
) -> pl.DataFrame:
    """Quality rows of bars with window_start in [start, end), oldest first."""
    rows = await conn.fetch(
        f"SELECT {', '.join(QUALITY_COLUMNS)} FROM quality_history WHERE interval = $1 "
        "AND window_start >= $2 AND window_start < $3 "
        "AND ($4::text[] IS NULL OR instrument = ANY($4)) "
        "AND ($5::text[] IS NULL OR provider = ANY($5)) ORDER BY window_start, instrument",
        interval, start, end,
        list(instruments) if instruments else None,
        list(providers) if providers else None,
    )  # fmt: skip
    return _frame(rows)


async def sla(
    conn: asyncpg.Connection | asyncpg.Pool,
    start: datetime,
    end: datetime,
    *,
    interval: str = "1m",
    bucket: str = "day",
) -> pl.DataFrame:
    """SLA figures per provider, instrument and ``bucket`` (day or hour), latest revisions."""
    if bucket not in ("day", "hour"):
        raise ValueError(f"bucket must be day or hour, got {bucket!r}")
    rows = await conn.fetch(
        f"""
        WITH bars AS (
            SELECT DISTINCT ON (instrument, window_start) *
            FROM quality_history
            WHERE interval = $1 AND window_start >= $2 AND window_start < $3
            ORDER BY instrument, window_start, revision DESC
        ), windows AS (
            SELECT instrument, date_trunc('{bucket}', window_start, 'UTC') AS period,
                   count(*) AS windows
            FROM bars GROUP BY 1, 2
        )
        SELECT b.provider, b.instrument, date_trunc('{bucket}', b.window_start, 'UTC') AS period,
               count(*) AS bars,
               count(*)::double precision / max(w.windows) AS availability,
               avg(b.completeness) AS completeness,
               avg(b.quality_score) AS quality_score,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM
                   b.emitted_at - b.window_end) * 1000) AS latency_p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM
                   b.emitted_at - b.window_end) * 1000) AS latency_p95_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM
                   b.emitted_at - b.window_end) * 1000) AS latency_p99_ms
        FROM bars b JOIN windows w
          ON w.instrument = b.instrument
         AND w.period = date_trunc('{bucket}', b.window_start, 'UTC')
        GROUP BY 1, 2, 3 ORDER BY 3, 2, 1
        """,
        interval, start, end,
    )  # fmt: skip
    return _frame(rows)


async def bar_lineage(
    conn: asyncpg.Connection | asyncpg.Pool,
    store: ObjectStore,
    raw_topic: str,
    instrument: str,
    interval: str,
    window_start: datetime,
) -> dict[str, Any]:
    """The stored bar's quality row, the archive manifests covering its raw offsets, and the
    raw messages of its partition up to its last offset (what the lineage trace replays)."""
    from mdstream.storage.replay import _load  # verified reads, one definition

    row = await conn.fetchrow(
        "SELECT * FROM quality_history WHERE instrument = $1 AND interval = $2 AND "
        "window_start = $3 ORDER BY revision DESC LIMIT 1",
        instrument, interval, window_start,
    )  # fmt: skip
    if row is None:
        raise KeyError(f"no quality history for {instrument} {interval} at {window_start}")
    partition, first, last = row["raw_partition"], row["raw_offset_first"], row["raw_offset_last"]
    if partition is None or first is None or last is None:
        raise ValueError(f"the bar {row['event_id']} carries no raw offsets")
    chain: list[Manifest] = read_manifests(store, raw_topic).get(partition, [])
    covering = [m for m in chain if m.start <= last and m.end > first]
    if not covering or covering[0].start > first or covering[-1].end <= last:
        raise LookupError(
            f"the archive of {raw_topic}[{partition}] does not cover offsets {first}..{last}"
        )
    messages = []
    for m in (m for m in chain if m.start <= last):  # the trace replays the partition's prefix
        df = _load(store, m).filter(pl.col("offset") <= last)
        messages += [
            RawMessage(value=v, key=k, topic=raw_topic, partition=partition, offset=o)
            for o, k, v in df.select("offset", "key", "value").iter_rows()
        ]
    return {
        "quality": dict(row),
        "objects": [m.object_key for m in covering],
        "manifests": covering,
        "messages": messages,
    }
