"""Backup and point-in-time recovery of PostgreSQL: base backups + WAL archived to the bucket.

- ``mdstream backup enable`` turns WAL archiving on (``ALTER SYSTEM``: ``archive_mode``,
  ``archive_command``; then restarts the server). The ``archive_command`` only copies each
  finished segment into a local spool directory owned by the server (atomically: copy to
  ``.tmp``, rename): it needs no Python and no credentials in the server's environment.
- ``mdstream backup ship-wal [--watch]`` moves spooled segments to
  ``backups/<cluster>/wal/<segment>`` (write-once; a segment already there with other bytes is
  a loud error) and removes them from the spool only once stored.
- ``mdstream backup base`` runs ``pg_basebackup -Ft -z -X fetch`` (self-contained: the WAL to
  make it consistent is inside) and stores it under ``backups/<cluster>/base/<label>/``.
- ``mdstream restore --time T --data-dir DIR`` takes the newest base backup finished before
  ``T``, fetches the archived WAL, and prepares ``DIR`` to recover to ``T`` and promote
  (``restore_command`` copies from the fetched WAL). Start it with the service manager on a
  port of your choice (the test does) or with ``pg_ctl``.

Daily snapshots: ``mdstream backup base --every 86400`` (the Procfile's ``base-backup``) and
``ship-wal --watch`` always. Cross-region copies are the bucket's replication (S3 CRR or the
store's own), which this single machine cannot exercise.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from mdstream.services.config import HOST
from mdstream.services.postgres import SUPERUSER, PostgresService, _bin_dir
from mdstream.storage.objectstore import ObjectExists, ObjectStore

__all__ = [
    "BaseBackup",
    "archive_command",
    "enable_archiving",
    "prepare_restore",
    "ship_wal",
    "take_base_backup",
]


def _owner_ids() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    owner = pwd.getpwnam(SUPERUSER)
    return owner.pw_uid, owner.pw_gid


def _chown_tree(path: Path) -> None:
    ids = _owner_ids()
    if ids is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, *ids)
        for name in dirs + files:
            os.chown(os.path.join(root, name), *ids, follow_symlinks=False)


def spool_dir(service: PostgresService) -> Path:
    return service.home / "wal-spool"


def archive_command(spool: Path) -> str:
    """Copy the finished segment into the spool, atomically (a retry simply copies again)."""
    return f"cp %p {spool}/%f.tmp && mv {spool}/%f.tmp {spool}/%f"


async def enable_archiving(dsn: str, spool: Path) -> bool:
    """Set archive_mode/archive_command; True when a restart is needed for them to apply."""
    spool.mkdir(parents=True, exist_ok=True)
    spool.chmod(0o700)
    _chown_tree(spool)
    conn = await asyncpg.connect(dsn)
    try:
        mode = await conn.fetchval("SHOW archive_mode")
        await conn.execute("ALTER SYSTEM SET archive_mode = 'on'")
        await conn.execute(f"ALTER SYSTEM SET archive_command = '{archive_command(spool)}'")
        await conn.execute("ALTER SYSTEM SET archive_timeout = '60s'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    return mode != "on"


def _wal_key(cluster: str, name: str) -> str:
    return f"backups/{cluster}/wal/{name}"


def ship_wal(store: ObjectStore, spool: Path, cluster: str) -> list[str]:
    """Store every finished segment of the spool in the bucket, then drop it from the spool."""
    shipped = []
    for path in sorted(spool.iterdir()):
        if path.name.endswith(".tmp") or not path.is_file():
            continue
        body = path.read_bytes()
        key = _wal_key(cluster, path.name)
        try:
            store.put_new(key, body)
        except ObjectExists:
            if hashlib.sha256(store.get(key)).digest() != hashlib.sha256(body).digest():
                raise RuntimeError(
                    f"{key} is already archived with other bytes: two clusters share the "
                    f"prefix {cluster!r}, or the spool holds a foreign file {path}"
                ) from None
        path.unlink()
        shipped.append(path.name)
    return shipped


@dataclass(frozen=True)
class BaseBackup:
    cluster: str
    label: str
    started_at: str
    finished_at: str
    keys: list[str]


def take_base_backup(service: PostgresService, store: ObjectStore, cluster: str) -> BaseBackup:
    """pg_basebackup (tar, gzip, WAL fetched into it) into ``backups/<cluster>/base/<label>/``."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("pg_basebackup not found under /usr/lib/postgresql/*/bin")
    started = datetime.now(UTC)
    label = started.strftime("%Y%m%dT%H%M%S%fZ")
    with tempfile.TemporaryDirectory(prefix="mdstream-basebackup-") as tmp:
        target = Path(tmp) / "out"
        done = subprocess.run(
            [str(bin_dir / "pg_basebackup"), "-h", HOST, "-p", str(service.port), "-U",
             SUPERUSER, "-D", str(target), "-Ft", "-z", "-X", "fetch", "-c", "fast",
             "-l", f"mdstream {label}"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed:\n{done.stderr}")
        finished = datetime.now(UTC)
        keys = []
        for path in sorted(target.iterdir()):
            key = f"backups/{cluster}/base/{label}/{path.name}"
            store.put_new(key, path.read_bytes())
            keys.append(key)
    backup = BaseBackup(cluster, label, started.isoformat(), finished.isoformat(), keys)
    store.put_new(f"backups/{cluster}/base/{label}/info.json", json.dumps(backup.__dict__).encode())
    return backup


def _base_backups(store: ObjectStore, cluster: str) -> list[BaseBackup]:
    infos = [k for k in store.keys(f"backups/{cluster}/base/") if k.endswith("/info.json")]
    return sorted((BaseBackup(**json.loads(store.get(k))) for k in infos), key=lambda b: b.label)


def prepare_restore(
    store: ObjectStore, cluster: str, target_time: datetime, data_dir: Path
) -> BaseBackup:
    """Lay out ``data_dir`` to recover ``cluster`` to ``target_time`` and promote on start."""
    if target_time.tzinfo is None:
        raise ValueError("the recovery target time must be timezone-aware")
    candidates = [
        b
        for b in _base_backups(store, cluster)
        if datetime.fromisoformat(b.finished_at) <= target_time
    ]
    if not candidates:
        raise RuntimeError(f"no base backup of {cluster!r} finished before {target_time}")
    base = candidates[-1]
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RuntimeError(f"{data_dir} is not empty: restore into a new directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for key in base.keys:
        if key.endswith("base.tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(store.get(key)), mode="r:gz") as tar:
                tar.extractall(data_dir, filter="fully_trusted")
    wal_dir = data_dir.parent / f"{data_dir.name}-wal"
    shutil.rmtree(wal_dir, ignore_errors=True)
    wal_dir.mkdir()
    for key in store.keys(f"backups/{cluster}/wal/"):
        (wal_dir / key.rsplit("/", 1)[1]).write_bytes(store.get(key))
    with (data_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"\n# mdstream restore of {cluster} base {base.label} to {target_time.isoformat()}\n"
            f"restore_command = 'cp {wal_dir}/%f %p'\n"
            f"recovery_target_time = '{target_time.isoformat()}'\n"
            "recovery_target_action = 'promote'\n"
            "archive_mode = 'off'\n"
        )
    (data_dir / "recovery.signal").touch()
    for stale in ("postmaster.pid", "postmaster.opts"):
        (data_dir / stale).unlink(missing_ok=True)
    _chown_tree(wal_dir)
    _chown_tree(data_dir)
    return base


def _run_backup(args: argparse.Namespace) -> int:
    import asyncio

    from mdstream.services import Settings

    service = PostgresService(Settings.from_env())
    store = ObjectStore()
    cluster = args.cluster
    if args.action == "enable":
        if asyncio.run(enable_archiving(service.address, spool_dir(service))):
            service.stop()
            service.start()
            service.wait_ready(time.monotonic() + 120)
        print(f"WAL archiving on: segments spool in {spool_dir(service)}")
    elif args.action == "ship-wal":
        while True:
            shipped = ship_wal(store, spool_dir(service), cluster)
            if shipped:
                print(f"shipped {len(shipped)} WAL segment(s)", file=sys.stderr)
            if not args.watch:
                break
            time.sleep(5)
    else:
        while True:
            backup = take_base_backup(service, store, cluster)
            print(json.dumps(backup.__dict__), flush=True)
            if not args.every:
                break
            time.sleep(args.every)
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    base = prepare_restore(
        ObjectStore(), args.cluster, datetime.fromisoformat(args.time), Path(args.data_dir)
    )
    print(f"{args.data_dir}: base {base.label} + WAL, recovers to {args.time} on start")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    backup = subparsers.add_parser("backup", help="PostgreSQL base backups + WAL to the bucket")
    backup.add_argument("action", choices=["enable", "ship-wal", "base"])
    backup.add_argument("--cluster", default="mdstream", help="prefix of this cluster's backups")
    backup.add_argument("--watch", action="store_true", help="ship-wal: keep shipping")
    backup.add_argument("--every", type=float, default=None, help="base: repeat every N seconds")
    backup.set_defaults(func=_run_backup)
    restore = subparsers.add_parser("restore", help="prepare a data dir recovered to a time")
    restore.add_argument("--time", required=True, help="ISO time with offset (recovery target)")
    restore.add_argument("--data-dir", required=True, help="new, empty directory")
    restore.add_argument("--cluster", default="mdstream")
    restore.set_defaults(func=_run_restore)
