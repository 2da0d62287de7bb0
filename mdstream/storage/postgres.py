"""PostgreSQL connections (asyncpg) and idempotent schema migrations applied at start.

The migrations live in :mod:`mdstream.storage.migrations` (named ``<area>/<nnn>``, never
edited once released: a change is a new migration); :func:`migrate` applies the ones not yet
recorded in ``schema_migrations``, in order, under an advisory lock, so any number of processes
may start at once. A pool may be confined to one schema (``search_path``), which is how tests get
a private database without deleting anything from append-only tables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import asyncpg

from mdstream.services import endpoints
from mdstream.storage.migrations import Migration, all_migrations

#: Any fixed number: every migrating process takes this transaction-level advisory lock.
_MIGRATION_LOCK = 0x6D647374  # "mdst"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def default_dsn() -> str:
    """``MDSTREAM_POSTGRES_DSN`` if set, else the local PostgreSQL of ``mdstream services``."""
    return os.environ.get("MDSTREAM_POSTGRES_DSN") or endpoints().postgres_dsn


def _check_schema(schema: str) -> str:
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"not a plain lower-case schema name: {schema!r}")
    return schema


async def migrate(conn: asyncpg.Connection, migrations: Iterable[Migration]) -> list[str]:
    """Apply the migrations not yet recorded; returns the names applied now (idempotent)."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for migration in migrations:
            if migration.name in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", migration.name)
            applied_now.append(migration.name)
    return applied_now


async def create_pool(
    dsn: str | None = None,
    *,
    schema: str | None = None,
    migrations: Sequence[Migration] | None = None,
    min_size: int = 1,
    max_size: int = 4,
    read_only: bool = False,
) -> asyncpg.Pool:
    """A pool whose connections use ``schema`` (created if needed) with every migration applied.

    ``migrations`` defaults to :func:`all_migrations`. ``read_only``: create and migrate
    nothing (readers may lack the privileges; a missing table is then a clear error).
    """
    dsn = dsn or default_dsn()
    settings = {} if schema is None else {"search_path": _check_schema(schema)}
    if schema is not None and not read_only:
        conn = await asyncpg.connect(dsn)
        try:  # IF NOT EXISTS alone races with a concurrent creator: take the lock
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        finally:
            await conn.close()
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, server_settings=settings
    )
    if read_only:
        return pool
    try:
        async with pool.acquire() as conn:
            await migrate(conn, all_migrations() if migrations is None else migrations)
    except BaseException:
        await pool.close()
        raise
    return pool


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop a (test or scratch) schema and everything in it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {_check_schema(schema)} CASCADE")
    finally:
        await conn.close()


async def has_extension(conn: asyncpg.Connection, name: str) -> bool:
    """Whether ``name`` is installed in this database (e.g. ``timescaledb``)."""
    return bool(await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = $1", name))
