"""Redis from Debian's `redis-server`, with our own config: loopback only, no persistence."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from mdstream.services.base import Service, ServiceError, say, tail
from mdstream.services.config import HOST


class RedisService(Service):
    """A cache/state store for the app: data on disk is not needed, so nothing is saved."""

    name = "redis"

    @property
    def port(self) -> int:
        return self.settings.redis_port

    @property
    def address(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.home / "redis.pid"

    @property
    def markers(self) -> tuple[str, ...]:
        # redis-server rewrites its title to "redis-server 127.0.0.1:PORT".
        return ("redis-server", f"{HOST}:{self.port}")

    @property
    def log_file(self) -> Path:
        return self.home / "redis.log"

    def missing_packages(self) -> list[str]:
        return [] if shutil.which("redis-server") else ["redis-server"]

    def start(self) -> None:
        self.check_port_free()
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "redis.conf"
        conf.write_text(
            f"bind {HOST}\n"
            f"port {self.port}\n"
            f"dir {self.home}\n"
            "daemonize yes\n"
            f"pidfile {self.pid_file}\n"
            f"logfile {self.log_file}\n"
            'save ""\n'
            "appendonly no\n"
        )
        self.pid_file.unlink(missing_ok=True)  # stale after a crash; redis writes a fresh one
        say(f"starting redis on {HOST}:{self.port}")
        done = subprocess.run(["redis-server", str(conf)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ServiceError(
                f"redis-server failed: {done.stderr.strip()}\nsee {self.log_file}:\n"
                f"{tail(self.log_file)}"
            )
        deadline = time.monotonic() + 10
        while self.pid() is None:  # the forked daemon writes its pid file a moment later
            if time.monotonic() > deadline:
                raise self.failure("wrote no pid file")
            time.sleep(0.05)

    def wait_ready(self, deadline: float) -> None:
        self.wait_port(deadline)
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=2)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError as exc:  # e.g. "LOADING" right after start
                    if time.monotonic() > deadline:
                        raise ServiceError(f"redis does not answer PING: {exc}") from exc
                    time.sleep(0.2)
        finally:
            client.close()
