"""The instrument master in PostgreSQL: instruments and dated symbol history (asyncpg).

Loading is idempotent (upserts keyed by instrument id and by symbol period), so a worker can
load the reference file at every start. Lookups answer "which instrument did this symbol mean at
that date", as `mdstream.core.instruments.InstrumentMaster.resolve` does in memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import asdict, fields

import asyncpg

from mdstream.core.instruments import (
    REFERENCE_FILE,
    Instrument,
    InstrumentMaster,
    SymbolPeriod,
    UnknownInstrument,
    load_master,
)
from mdstream.services import endpoints

SCHEMA = """
CREATE TABLE IF NOT EXISTS instruments (
    instrument_id   text PRIMARY KEY,
    symbol          text NOT NULL,
    mic             text NOT NULL,
    currency        text NOT NULL,
    instrument_type text NOT NULL,
    name            text,
    isin            text,
    cusip           text,
    figi            text,
    tick_size       double precision,
    lot_size        double precision NOT NULL DEFAULT 1,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS instrument_symbols (
    symbol          text NOT NULL,
    instrument_id   text NOT NULL REFERENCES instruments (instrument_id),
    mic             text NOT NULL,
    valid_from      date NOT NULL,
    valid_to        date NOT NULL,
    PRIMARY KEY (symbol, valid_from, instrument_id),
    CHECK (valid_from <= valid_to)
);
CREATE INDEX IF NOT EXISTS instrument_symbols_by_id ON instrument_symbols (instrument_id);
"""

_COLUMNS = [f.name for f in fields(Instrument)]
_UPSERT = f"""
INSERT INTO instruments ({", ".join(_COLUMNS)})
VALUES ({", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))})
ON CONFLICT (instrument_id) DO UPDATE SET
{", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])}, updated_at = now()
"""


async def create_schema(conn: asyncpg.Connection) -> None:
    await conn.execute(SCHEMA)


async def load(conn: asyncpg.Connection, master: InstrumentMaster) -> None:
    """Write the master (instruments, then each one's full symbol history) in one transaction.

    Re-loading the same master changes nothing; a changed history replaces the old one."""
    async with conn.transaction():
        await create_schema(conn)
        await conn.executemany(
            _UPSERT, [tuple(asdict(i).values()) for i in master.instruments.values()]
        )
        ids = list(master.instruments)
        await conn.execute("DELETE FROM instrument_symbols WHERE instrument_id = ANY($1)", ids)
        periods = [p for iid in ids for p in master.history(iid)]
        await conn.executemany(
            "INSERT INTO instrument_symbols VALUES ($1, $2, $3, $4, $5)",
            [(p.symbol, p.instrument_id, p.mic, p.start, p.end) for p in periods],
        )


async def lookup(conn: asyncpg.Connection, symbol: str, on: dt.date) -> Instrument:
    """The instrument `symbol` meant on the exchange-local date `on`; UnknownInstrument if none."""
    rows = await conn.fetch(
        f"""SELECT {", ".join(f"i.{c}" for c in _COLUMNS)}
            FROM instrument_symbols s JOIN instruments i USING (instrument_id)
            WHERE s.symbol = $1 AND s.valid_from <= $2 AND $2 <= s.valid_to""",
        symbol.upper(),
        on,
    )
    if len(rows) != 1:
        what = "not in the instrument master" if not rows else "ambiguous"
        raise UnknownInstrument(f"symbol {symbol!r} is {what} on {on}")
    return Instrument(**{**dict(rows[0]), "symbol": symbol.upper()})


async def read_master(conn: asyncpg.Connection) -> InstrumentMaster:
    """The whole master back from the database (what a worker loads at start)."""
    master = InstrumentMaster()
    for row in await conn.fetch(f"SELECT {', '.join(_COLUMNS)} FROM instruments"):
        master.instruments[row["instrument_id"]] = Instrument(**dict(row))
    for row in await conn.fetch(
        "SELECT symbol, instrument_id, mic, valid_from, valid_to FROM instrument_symbols"
    ):
        master.add_period(SymbolPeriod(*row.values()))
    return master


async def _load_command(dsn: str, master: InstrumentMaster) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await load(conn, master)
        return await conn.fetchval("SELECT count(*) FROM instruments")
    finally:
        await conn.close()


def register(subparsers) -> None:
    """`mdstream instruments load`: the reference file (and map files) into PostgreSQL."""
    parser = subparsers.add_parser("instruments", help="instrument master")
    actions = parser.add_subparsers(dest="action", required=True)
    loader = actions.add_parser("load", help="load a reference CSV into PostgreSQL (idempotent)")
    loader.add_argument("--reference", default=str(REFERENCE_FILE), help="reference CSV")
    loader.add_argument(
        "--map-file",
        action="append",
        default=[],
        metavar="INSTRUMENT_ID=PATH",
        help="a Lean map file giving an instrument's dated symbols (repeatable)",
    )
    loader.add_argument("--dsn", help="PostgreSQL DSN (default: the local service)")
    loader.set_defaults(func=_run_load)


def _run_load(args) -> int:
    maps = dict(item.split("=", 1) for item in args.map_file)
    master = load_master(args.reference, maps)
    for issue in master.issues:
        print(f"skipped {issue.field} of {issue.instrument}: {issue.reason}")
    dsn = args.dsn or endpoints().postgres_dsn
    total = asyncio.run(_load_command(dsn, master))
    print(f"loaded {len(master.instruments)} instruments ({total} in the table)")
    return 0
