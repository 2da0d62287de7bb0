"""Process plumbing shared by the service managers: pid files, ports, signals, tools, apt."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mdstream.services.config import HOST, Settings


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message says what to look at."""


@dataclass(frozen=True)
class ServiceStatus:
    """One line of `mdstream services status`."""

    name: str
    state: str  # "up", "starting" (process alive, port closed), "down", "conflict" (foreign port)
    address: str
    pid: int | None

    @property
    def up(self) -> bool:
        return self.state == "up"

    def line(self) -> str:
        return f"{self.name:<10} {self.state:<9} {self.address:<48} pid={self.pid or '-'}"


def say(message: str) -> None:
    """Progress goes to stderr so stdout stays parseable (status lines, endpoints)."""
    print(f"mdstream services: {message}", file=sys.stderr, flush=True)


def port_open(port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on the loopback port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_pid(path: Path) -> int | None:
    """First line of a pid file (postmaster.pid has more lines), or None when absent/garbled."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int, markers: Sequence[str]) -> bool:
    """Alive, not a zombie, and its command line names our instance (guards against pid reuse)."""
    with contextlib.suppress(ChildProcessError):
        # A child we spawned and killed ourselves stays a zombie until reaped: reap it here.
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        return False
    return all(marker in cmdline for marker in markers)


def terminate(pid: int, markers: Sequence[str], signals: Sequence[int], grace: float) -> None:
    """Send each signal in turn, waiting `grace` seconds for the process to go before the next."""
    for sig in signals:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not pid_alive(pid, markers):
                return
            time.sleep(0.1)
    if pid_alive(pid, markers):
        raise ServiceError(f"pid {pid} survived {[signal.Signals(s).name for s in signals]}")


def require_tool(name: str, why: str) -> str:
    """Absolute path of a tool on PATH, or an error that names it and how to get it."""
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH: {why}")
    return path


def apt_install(packages: Sequence[str]) -> None:
    """Install Debian packages a fresh CI machine lacks (root directly, otherwise via sudo -n)."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise ServiceError(f"need root or sudo to `apt-get install {' '.join(packages)}`")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(f"installing missing Debian packages: {' '.join(packages)} (apt-get update + install)")
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt run (CI image setup) may hold the lock
    for command in (["apt-get", *wait, "update"], ["apt-get", *wait, "install", "-y", *packages]):
        done = subprocess.run([*prefix, *command], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServiceError(f"`{' '.join(command)}` failed:\n{done.stdout}{done.stderr}")


def tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log, to put the cause of a failed start into the error itself."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class Service(ABC):
    """One locally managed server: finds its own process, starts it detached, stops it."""

    name: ClassVar[str]
    # Sent in turn by `stop`, `stop_grace` seconds apart; PostgreSQL overrides them.
    stop_signals: ClassVar[tuple[int, ...]] = (signal.SIGTERM, signal.SIGKILL)
    stop_grace: ClassVar[float] = 30.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.run_dir / self.name

    @property
    @abstractmethod
    def port(self) -> int:
        """Loopback port clients connect to."""

    @property
    @abstractmethod
    def address(self) -> str:
        """What a client passes to connect (bootstrap servers, DSN, URL)."""

    @property
    @abstractmethod
    def pid_file(self) -> Path:
        """Where the running process' pid is recorded."""

    @property
    @abstractmethod
    def markers(self) -> tuple[str, ...]:
        """Substrings of our process' command line that tell it apart from any other."""

    @property
    @abstractmethod
    def log_file(self) -> Path:
        """The log to read when a start fails."""

    def missing_packages(self) -> list[str]:
        """Debian packages to install before `start` can work."""
        return []

    @abstractmethod
    def start(self) -> None:
        """Launch the process detached from the caller; may return before it is ready."""

    @abstractmethod
    def wait_ready(self, deadline: float) -> None:
        """Block until clients can use the service, or raise ServiceError at `deadline`."""

    def pid(self) -> int | None:
        """Pid of our running instance; None when down, including after a crash (stale file)."""
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid, self.markers) else None

    def status(self) -> ServiceStatus:
        pid = self.pid()
        if pid is None:
            state = "conflict" if port_open(self.port) else "down"
        else:
            state = "up" if port_open(self.port) else "starting"
        return ServiceStatus(self.name, state, self.address, pid)

    def check_port_free(self) -> None:
        """Refuse to start when another program holds our port: we would never become ready."""
        deadline = time.monotonic() + 5  # a process killed a moment ago may still hold it
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        if port_open(self.port):
            raise ServiceError(
                f"{self.name}: port {HOST}:{self.port} is in use by a process mdstream did not "
                f"start; stop it or pick another port (MDSTREAM_{self.name.upper()}_PORT)"
            )

    def stop(self) -> bool:
        """Stop our instance; False when it was already down (a no-op)."""
        pid = self.pid()
        if pid is None:
            return False
        say(f"stopping {self.name} (pid {pid})")
        terminate(pid, self.markers, self.stop_signals, self.stop_grace)
        return True

    def failure(self, what: str, exc: BaseException | None = None) -> ServiceError:
        """An error that carries the log tail, so the cause is visible without digging."""
        return ServiceError(
            f"{self.name} {what}; see {self.log_file}:\n{tail(self.log_file)}"
            + (f"\nlast error: {exc}" if exc else "")
        )

    def wait_port(self, deadline: float) -> None:
        """Wait for the port to accept, failing fast with the log tail if the process died.

        The process must be seen gone for a second in a row: on a loaded machine a JVM that had
        just been started was once not found by its pid file and markers, yet came up."""
        gone_since: float | None = None
        while not port_open(self.port):
            if self.pid() is not None:
                gone_since = None
            elif gone_since is None:
                gone_since = time.monotonic()
            elif time.monotonic() - gone_since > 1.0:
                raise self.failure("exited during start-up")
            if time.monotonic() > deadline:
                raise self.failure(f"did not open {HOST}:{self.port} in time")
            time.sleep(0.2)
