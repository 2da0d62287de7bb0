"""A private PostgreSQL schema per test: append-only tables cannot be emptied, so each test
gets its own and drops it afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mdstream.services import Endpoints
from mdstream.storage.postgres import create_pool, drop_schema


@pytest.fixture
async def pg(services: Endpoints) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    pool = await create_pool(services.postgres_dsn, schema=schema)
    try:
        yield pool, schema
    finally:
        await pool.close()
        await drop_schema(services.postgres_dsn, schema)
