"""The instrument master in the real PostgreSQL: idempotent load, point-in-time symbol lookup."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mdstream.cli import main
from mdstream.core.instruments import (
    Instrument,
    InstrumentMaster,
    SymbolPeriod,
    UnknownInstrument,
    load_master,
)
from mdstream.services import Endpoints
from mdstream.storage import instruments as store
from tests.shared_data import shared_path

pytestmark = pytest.mark.services


@pytest.fixture
async def conn(services: Endpoints) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a schema of its own, dropped afterwards."""
    schema = f"test_instruments_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(services.postgres_dsn)
    await connection.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
    try:
        yield connection
    finally:
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        await connection.close()


def _renamed_master() -> InstrumentMaster:
    """GOOG meant class A until 2014-04-02 and class C from 2014-04-03 (ticker reuse)."""
    master = InstrumentMaster()
    master.add(Instrument("ID_A", "GOOGL", "XNAS"))
    master.add(Instrument("ID_C", "GOOG", "XNAS"))
    d = dt.date
    master.add_history(
        "ID_A",
        [
            SymbolPeriod("GOOG", "", "XNAS", d(2004, 8, 19), d(2014, 4, 2)),
            SymbolPeriod("GOOGL", "", "XNAS", d(2014, 4, 3), d(2050, 12, 31)),
        ],
    )
    master.add_history(
        "ID_C",
        [
            SymbolPeriod("GOOCV", "", "XNAS", d(2014, 3, 27), d(2014, 4, 2)),
            SymbolPeriod("GOOG", "", "XNAS", d(2014, 4, 3), d(2050, 12, 31)),
        ],
    )
    return master


async def test_load_is_idempotent_and_round_trips(conn: asyncpg.Connection) -> None:
    master = load_master()
    await store.load(conn, master)
    await store.load(conn, master)
    assert await conn.fetchval("SELECT count(*) FROM instruments") == len(master.instruments) == 8
    assert await conn.fetchval("SELECT count(*) FROM instrument_symbols") == 8
    back = await store.read_master(conn)
    assert back.instruments == master.instruments
    aapl = await store.lookup(conn, "aapl", dt.date(2025, 11, 24))
    assert (aapl.isin, aapl.mic, aapl.tick_size) == ("US0378331005", "XNAS", 0.01)


async def test_lookup_as_of_a_date_follows_renames_and_reuse(conn: asyncpg.Connection) -> None:
    await store.load(conn, _renamed_master())
    d = dt.date
    assert (await store.lookup(conn, "GOOG", d(2014, 4, 2))).instrument_id == "ID_A"
    assert (await store.lookup(conn, "GOOG", d(2014, 4, 3))).instrument_id == "ID_C"
    assert (await store.lookup(conn, "GOOCV", d(2014, 3, 28))).instrument_id == "ID_C"
    with pytest.raises(UnknownInstrument, match="GOOCV"):
        await store.lookup(conn, "GOOCV", d(2014, 4, 3))
    with pytest.raises(UnknownInstrument, match="GOOGL"):
        await store.lookup(conn, "GOOGL", d(2014, 4, 1))


async def test_reload_with_a_changed_history_replaces_it(conn: asyncpg.Connection) -> None:
    await store.load(conn, _renamed_master())
    master = _renamed_master()
    master.add_history(
        "ID_C", [SymbolPeriod("GOOG", "", "XNAS", dt.date(2014, 4, 3), dt.date(2050, 12, 31))]
    )
    await store.load(conn, master)
    with pytest.raises(UnknownInstrument):
        await store.lookup(conn, "GOOCV", dt.date(2014, 3, 28))
    back = await store.read_master(conn)
    assert back.resolve("GOOG", 1_400_000_000 * 10**9).instrument_id == "ID_C"  # 2014-05-13


@pytest.mark.realdata
async def test_cli_loads_the_reference_and_map_files(services: Endpoints) -> None:
    qqq_map = shared_path("lean", "equity", "usa", "map_files", "qqq.csv")
    qqq_id = "BBG000BSWKH7"  # QQQ's composite FIGI in the shipped reference file
    args = [
        "instruments",
        "load",
        "--dsn",
        services.postgres_dsn,
        "--map-file",
        f"{qqq_id}={qqq_map}",
    ]
    # The CLI runs its own event loop: call it from a worker thread of this test's loop.
    for _ in range(2):  # idempotent
        assert await asyncio.to_thread(main, args) == 0
    conn = await asyncpg.connect(services.postgres_dsn)
    try:
        renamed = await store.lookup(conn, "QQQQ", dt.date(2008, 1, 2))
        assert renamed.instrument_id == qqq_id and renamed.symbol == "QQQQ"
        with pytest.raises(UnknownInstrument):
            await store.lookup(conn, "QQQ", dt.date(2008, 1, 2))
    finally:
        await conn.close()
