"""The factor table and audit trail in the real PostgreSQL: append-only, idempotent, dated."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest

from mdstream.core.corporate_actions import (
    ActionKind,
    AdjustmentMode,
    CorporateAction,
    DecisionCode,
    adjust,
)
from mdstream.services import Endpoints
from mdstream.storage import bars as bar_store
from mdstream.storage.corporate_actions import (
    read_audit,
    read_factor_table,
    record_announcement,
)
from mdstream.storage.migrations import all_migrations
from mdstream.storage.postgres import create_pool, drop_schema, migrate
from tests.pg import pg  # noqa: F401  (fixture)

pytestmark = pytest.mark.services

D1, D2, D3, D4 = date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4), date(2024, 1, 5)


def _dividend(amount: float, ex: date, source: str = "feed-a", **kw: object) -> CorporateAction:
    return CorporateAction(
        kind=ActionKind.CASH_DIVIDEND,
        instrument_id="X",
        symbol="X",
        ex_date=ex,
        amount=amount,
        currency="USD",
        source=source,
        **kw,  # type: ignore[arg-type]
    )


def _split(new: int, old: int, ex: date, **kw: object) -> CorporateAction:
    return CorporateAction.split(
        instrument_id="X", symbol="X", ex_date=ex, new=new, old=old, source="feed-a", **kw
    )


async def _store_daily(pool: asyncpg.Pool, closes: dict[date, float]) -> None:
    rows = []
    for day, close in closes.items():
        start = datetime(day.year, day.month, day.day, 5, tzinfo=UTC)  # 00:00 New York (EST)
        rows.append(
            ("X", start, start.replace(hour=21), close, close, close, close, 1000.0, close, 10, 0,
             None, [])
        )  # fmt: skip
    async with pool.acquire() as conn:
        await bar_store.write_bars(conn, "1d", rows)


async def test_migrations_are_idempotent_and_bars_are_partitioned(pg) -> None:  # noqa: F811
    pool, _ = pg
    async with pool.acquire() as conn:
        assert await migrate(conn, all_migrations()) == []  # create_pool applied them all
        names = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        assert names == {m.name for m in all_migrations()}
        # no TimescaleDB here: declarative range partitioning
        assert not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname='timescaledb'")
        for freq in bar_store.FREQUENCIES:
            assert await bar_store.is_partitioned(conn, freq)


async def test_tables_are_append_only(pg) -> None:  # noqa: F811
    pool, _ = pg
    await _store_daily(pool, {D1: 50.0, D2: 51.0})
    async with pool.acquire() as conn:
        outcome = await record_announcement(conn, "k1", _dividend(1.0, D2))
        assert outcome.applied
        for table in ("corporate_action_audit", "adjustment_factors"):
            for statement in (
                f"UPDATE {table} SET source = 'tampered'",
                f"DELETE FROM {table}",
                f"TRUNCATE {table} CASCADE",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM adjustment_factors") == 1
        assert await conn.fetchval("SELECT source FROM corporate_action_audit") == "feed-a"


async def test_each_outcome_is_audited_and_only_applied_events_get_factors(pg) -> None:  # noqa: F811
    pool, _ = pg
    await _store_daily(pool, {D1: 50.0, D2: 40.0, D4: 20.0})  # no bar on D3
    async with pool.acquire() as conn:
        dividend = await record_announcement(conn, "a1", _dividend(1.0, D2), announcement_id="n1")
        duplicate = await record_announcement(conn, "a2", _dividend(1.0, D2, source="feed-b"))
        conflict = await record_announcement(conn, "a3", _dividend(1.5, D2, source="feed-c"))
        no_close = await record_announcement(conn, "a4", _dividend(0.5, D1))
        split = await record_announcement(conn, "a5", _split(2, 1, D3))
        rename = await record_announcement(
            conn,
            "a6",
            CorporateAction(
                kind=ActionKind.SYMBOL_CHANGE,
                instrument_id="X",
                symbol="X",
                ex_date=D4,
                new_symbol="Y",
                source="feed-a",
            ),
        )
        audit = await read_audit(conn, "X")
        factors = await read_factor_table(conn, "X")

    # $1 ex D2 against the stored close of D1 (50): 1 - 1/50
    assert dividend.outcome is DecisionCode.APPLIED and dividend.reference_date == D1
    assert dividend.price_factor == pytest.approx(0.98, rel=1e-15)
    assert duplicate.outcome is DecisionCode.DUPLICATE and "a1" in duplicate.reason
    assert conflict.outcome is DecisionCode.CONFLICT and "a1" in conflict.reason
    assert no_close.outcome is DecisionCode.NO_REFERENCE_CLOSE
    assert split.outcome is DecisionCode.APPLIED and split.price_factor == 0.5
    assert split.volume_factor == 2.0 and "no bar on the ex-date" in split.reason
    assert rename.outcome is DecisionCode.NO_PRICE_EFFECT
    assert audit.get_column("outcome").to_list() == [
        "applied", "duplicate", "conflict", "no_reference_close", "applied", "no_price_effect",
    ]  # fmt: skip
    assert audit.get_column("source").to_list()[:3] == ["feed-a", "feed-b", "feed-c"]
    assert audit.get_column("announcement_id").to_list()[0] == "n1"
    assert factors.select("ex_date", "kind", "price_factor").rows() == [
        (D2, "cash_dividend", pytest.approx(0.98)),
        (D3, "stock_split", 0.5),
    ]


async def test_recording_the_same_key_again_writes_nothing(pg) -> None:  # noqa: F811
    pool, _ = pg
    await _store_daily(pool, {D1: 50.0, D2: 51.0})
    async with pool.acquire() as conn:
        first = await record_announcement(conn, "kafka:t:0:7", _dividend(1.0, D2))
        again = await record_announcement(conn, "kafka:t:0:7", _dividend(1.0, D2))
        # even with different content: the key says it is the same message, replayed
        replay = await record_announcement(conn, "kafka:t:0:7", _dividend(9.0, D2))
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM corporate_action_audit) AS audit,"
            " (SELECT count(*) FROM adjustment_factors) AS factors"
        )
    assert first.new and not again.new and not replay.new
    assert again == first.__class__(**{**_fields(first), "new": False})
    assert replay.action.amount == 1.0
    assert tuple(counts) == (1, 1)


def _fields(outcome: object) -> dict[str, object]:
    return {name: getattr(outcome, name) for name in outcome.__slots__}  # type: ignore[attr-defined]


async def test_point_in_time_reads_use_known_at(pg) -> None:  # noqa: F811
    """A dividend announced after its ex-date (a late vendor correction) is invisible to a read
    as of any time before it was announced, and the stored factors adjust like the core's."""
    pool, _ = pg
    await _store_daily(pool, {D1: 50.0, D2: 49.0, D3: 48.0, D4: 47.0})
    late = datetime(2024, 2, 1, 14, 30, tzinfo=UTC)
    async with pool.acquire() as conn:
        early = datetime(2023, 12, 1, tzinfo=UTC)
        await record_announcement(conn, "s", _split(2, 1, D3, announced_at=early))
        await record_announcement(conn, "d", _dividend(1.0, D2, announced_at=late))
        factors = await read_factor_table(conn, "X")
        raw = await bar_store.read_bars(conn, "X", "1d", D1, D4)
    assert factors.get_column("known_at").to_list() == [late, datetime(2024, 1, 4, tzinfo=UTC)]

    def closes(as_of: date | datetime) -> list[float]:
        return adjust(raw, factors, AdjustmentMode.ADJUSTED, as_of=as_of)["close"].to_list()

    assert raw.get_column("date").to_list() == [D1, D2, D3, D4]
    assert closes(date(2024, 1, 31)) == [25.0, 24.5, 48.0, 47.0]  # the split only
    assert closes(late) == pytest.approx([25.0 * 0.98, 24.5, 48.0, 47.0])
    assert closes(datetime(2024, 1, 3, tzinfo=UTC)) == [50.0, 49.0, 48.0, 47.0]  # before the ex


async def test_concurrent_starts_apply_each_migration_once(services: Endpoints) -> None:
    """Several processes starting at once (workers, the sink, history readers) on an empty
    schema: the advisory lock lets one migrate; the others find the work done."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pools = []
    try:
        pools = await asyncio.gather(
            *(create_pool(services.postgres_dsn, schema=schema) for _ in range(4))
        )
        rows = await pools[0].fetch("SELECT name FROM schema_migrations")
        assert sorted(r["name"] for r in rows) == sorted(m.name for m in all_migrations())
    finally:
        for pool in pools:
            await pool.close()
        await drop_schema(services.postgres_dsn, schema)
