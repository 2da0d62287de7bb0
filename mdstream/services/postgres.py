"""PostgreSQL from Debian's package, as our own cluster under the run dir (not the system one)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

from mdstream.services.base import Service, ServiceError, say, tail
from mdstream.services.config import HOST

DATABASE = "mdstream"
SUPERUSER = "postgres"
_INCLUDE = "include 'mdstream.conf'"


def _bin_dir() -> Path | None:
    """Newest /usr/lib/postgresql/<ver>/bin: Debian keeps initdb/pg_ctl off PATH."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    numeric = [p for p in found if re.fullmatch(r"\d+", p.parent.name)]
    return max(numeric, key=lambda p: int(p.parent.name), default=None)


class PostgresService(Service):
    """Trust auth over 127.0.0.1 only and no unix socket: nothing else can reach it."""

    name = "postgres"
    # SIGINT is "fast" shutdown; SIGTERM ("smart") would wait for every client to disconnect.
    stop_signals = (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def port(self) -> int:
        return self.settings.postgres_port

    @property
    def address(self) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{DATABASE}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    @property
    def markers(self) -> tuple[str, ...]:
        return ("postgres", str(self.data_dir))

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    def missing_packages(self) -> list[str]:
        return [] if _bin_dir() else ["postgresql"]

    def _run(self, tool: str, *args: str, as_owner: bool = True) -> str:
        """Run a package binary; as root, server-side tools must run as the `postgres` user."""
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise ServiceError("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
        prefix = ["runuser", "-u", SUPERUSER, "--"] if as_owner and os.geteuid() == 0 else []
        done = subprocess.run(
            [*prefix, str(bin_dir / tool), *args],
            cwd=self.home,  # postgres cannot chdir into e.g. /root
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ServiceError(
                f"postgres: `{tool} {' '.join(args)}` failed:\n{done.stdout}{done.stderr}\n"
                f"see {self.log_file}:\n{tail(self.log_file)}"
            )
        return done.stdout

    def _give_to_owner(self, *paths: Path) -> None:
        """As root, files we write must belong to `postgres`, which runs the server."""
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            for path in paths:
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def _prepare_home(self) -> None:
        """Own the cluster dir as `postgres` and make sure that user can reach it."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self._give_to_owner(self.home)
        if os.geteuid() != 0:
            return
        for parent in self.home.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                say(f"chmod o+x {parent} so the postgres user can reach {self.home}")
                parent.chmod(mode | stat.S_IXOTH)

    def _write_config(self) -> None:
        """Regenerated on every start so a changed port takes effect."""
        conf = self.data_dir / "postgresql.conf"
        if _INCLUDE not in conf.read_text():
            with conf.open("a") as f:
                f.write(f"\n{_INCLUDE}\n")
        (self.data_dir / "mdstream.conf").write_text(
            f"listen_addresses = '{HOST}'\nport = {self.port}\nunix_socket_directories = ''\n"
        )
        # `replication`: pg_basebackup (mdstream backup) connects as a replication client.
        (self.data_dir / "pg_hba.conf").write_text(
            f"host all all {HOST}/32 trust\nhost replication all {HOST}/32 trust\n"
        )
        self._give_to_owner(*(self.data_dir / n for n in ("mdstream.conf", "pg_hba.conf")))

    def start(self) -> None:
        self.check_port_free()
        self._prepare_home()
        if not (self.data_dir / "PG_VERSION").exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-done initdb
            say(f"initdb {self.data_dir}")
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust",
                "-E", "UTF8", "--locale=C",
            )  # fmt: skip
        self._write_config()
        self.pid_file.unlink(missing_ok=True)  # stale: pid() said our postmaster is not running
        say(f"starting postgres on {HOST}:{self.port}")
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
                  "start")  # fmt: skip

    def wait_ready(self, deadline: float) -> None:
        self.wait_port(deadline)
        exists = self._run(
            "psql", "-h", HOST, "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres", "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", as_owner=False,
        )  # fmt: skip
        if exists.strip() != "1":
            say(f"creating database {DATABASE}")
            self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", SUPERUSER, DATABASE,
                      as_owner=False)  # fmt: skip
