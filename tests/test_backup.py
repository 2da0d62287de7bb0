"""Backup and point-in-time recovery on real PostgreSQL and s3proxy, and a full disk.

The backup test runs its own PostgreSQL cluster (own run dir and port): WAL archiving needs a
restart, which the shared server of the other tests must not get.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from mdstream.services import Endpoints, Settings
from mdstream.services.postgres import PostgresService
from mdstream.storage import bars as bar_store
from mdstream.storage.backup import (
    enable_archiving,
    prepare_restore,
    ship_wal,
    spool_dir,
    take_base_backup,
)
from mdstream.storage.objectstore import ObjectStore
from tests.pg import pg  # noqa: F401  (fixture)

pytestmark = pytest.mark.services


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory the `postgres` user can reach. Not pytest's tmp_path: every pytest session
    of root on the machine (other checkouts too) resets /tmp/pytest-of-root to 0700."""
    path = Settings.from_env().run_dir / "scratch" / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _rows(dsn: str) -> list[tuple]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch("SELECT id, note FROM ledger ORDER BY id")]
    finally:
        await conn.close()


async def test_restore_to_a_point_in_time_gives_the_tables_as_they_were(
    services: Endpoints, scratch: Path
) -> None:
    store = ObjectStore()
    cluster = f"test-{uuid.uuid4().hex[:8]}"
    source = PostgresService(
        Settings(run_dir=scratch / "a", cache_dir=scratch, postgres_port=_free_port())
    )
    restored: PostgresService | None = None
    try:
        source.start()
        source.wait_ready(time.monotonic() + 120)
        if await enable_archiving(source.address, spool_dir(source)):
            source.stop()
            source.start()
            source.wait_ready(time.monotonic() + 120)
        conn = await asyncpg.connect(source.address)
        try:
            await conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
            await conn.executemany("INSERT INTO ledger VALUES ($1, $2)",
                                   [(i, f"before base {i}") for i in range(100)])  # fmt: skip
            base = await asyncio.to_thread(take_base_backup, source, store, cluster)
            await conn.executemany("INSERT INTO ledger VALUES ($1, $2)",
                                   [(i, f"after base {i}") for i in range(100, 150)])  # fmt: skip
            await conn.execute("UPDATE ledger SET note = 'changed' WHERE id < 10")
            expected = await _rows(source.address)
            target: datetime = await conn.fetchval("SELECT clock_timestamp()")
            await asyncio.sleep(0.5)
            await conn.execute("DELETE FROM ledger WHERE id >= 50")  # after the target: undone
            await conn.execute("INSERT INTO ledger VALUES (999, 'too late')")
            last = await conn.fetchval("SELECT pg_walfile_name(pg_switch_wal())")
            deadline = time.monotonic() + 60
            while (
                await conn.fetchval("SELECT last_archived_wal FROM pg_stat_archiver") or ""
            ) < last:
                assert time.monotonic() < deadline, "the segment was never archived"
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        shipped = ship_wal(store, spool_dir(source), cluster)
        assert last in shipped and not any(spool_dir(source).iterdir())
        assert ship_wal(store, spool_dir(source), cluster) == []
        assert datetime.fromisoformat(base.finished_at) <= target

        source.stop()  # the restore must not need the original server
        restored = PostgresService(
            Settings(run_dir=scratch / "b", cache_dir=scratch, postgres_port=_free_port())
        )
        restored.home.mkdir(parents=True)
        got = prepare_restore(store, cluster, target, restored.data_dir)
        assert got.label == base.label
        restored._prepare_home()
        restored.start()
        restored.wait_ready(time.monotonic() + 120)
        assert await _rows(restored.address) == expected
        with pytest.raises(RuntimeError, match="no base backup"):
            prepare_restore(store, cluster, target - timedelta(days=1), scratch / "c")
    finally:
        for service in (source, restored):
            if service is not None:
                service.stop()


def _mount_tiny_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True)  # fmt: skip
    return done.returncode == 0


def _row(n: int) -> tuple:
    start = datetime(2026, 1, 2, tzinfo=UTC) + timedelta(seconds=n)
    return ("DISK", start, start + timedelta(seconds=1), 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1, 0,
            "x" * 200, ["alpaca"])  # fmt: skip


async def test_a_full_disk_fails_bar_writes_loudly_and_they_resume_when_space_returns(
    pg,  # noqa: F811
    scratch: Path,
) -> None:
    """The day's new partition lands on a tablespace on a 4 MB tmpfs (default_tablespace)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    pool, _ = pg
    mount = scratch / "tiny"
    if not _mount_tiny_tmpfs(mount, "4m"):
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    tablespace = f"tiny_{uuid.uuid4().hex[:8]}"
    try:
        os.chown(mount, *_pg_ids())
        for parent in mount.parents:  # the server runs as `postgres`: it must reach the mount
            parent.chmod(parent.stat().st_mode | 0o001)
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLESPACE {tablespace} LOCATION '{mount}'")
        rows = [_row(n) for n in range(20_000)]  # ~6 MB of heap and index: more than 4 MB
        async with pool.acquire() as conn:
            await conn.execute(f"SET default_tablespace = {tablespace}")
            with pytest.raises(asyncpg.exceptions.DiskFullError, match="No space left"):
                await bar_store.write_bars(conn, "1s", rows)
            assert await conn.fetchval("SELECT count(*) FROM bars_1s") == 0  # all or nothing
            await conn.execute("SELECT 1")  # the connection survived the failed transaction
            # space returns: the same write goes through
            subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
            assert await bar_store.write_bars(conn, "1s", rows) == len(rows)
            assert await conn.fetchval("SELECT count(*) FROM bars_1s") == len(rows)
            await conn.execute("DROP TABLE bars_1s_p20260102")  # it lives on the tmpfs
            await conn.execute("RESET default_tablespace")
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP TABLESPACE IF EXISTS {tablespace}")
        subprocess.run(["umount", str(mount)], capture_output=True)


def _pg_ids() -> tuple[int, int]:
    import pwd

    owner = pwd.getpwnam("postgres")
    return owner.pw_uid, owner.pw_gid
