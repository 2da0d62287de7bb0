"""Real Kafka, PostgreSQL, Redis, an S3 store (s3proxy), Prometheus, Pulsar and a schema registry
on loopback, started by the project itself (no Docker).

`ensure_up()` is idempotent and safe to call from several processes at once: a file lock in the
run dir serialises starts and stops, and a healthy service is left untouched. With no `only`,
`ensure_up()` starts the core services (all but Pulsar and the registry): Pulsar needs ~2 GB and
the registry a Java 21 JVM, so tests and commands ask for them by name (`mdstream services up
--all` starts every one). `status()` defaults to the core services too; `stop_all()` to all.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from mdstream.services.apicurio import ApicurioService
from mdstream.services.base import Service, ServiceError, ServiceStatus, apt_install, say
from mdstream.services.config import Settings
from mdstream.services.kafka import KafkaService
from mdstream.services.postgres import PostgresService
from mdstream.services.prometheus import PrometheusService
from mdstream.services.pulsar import PulsarService
from mdstream.services.redis import RedisService
from mdstream.services.s3proxy import S3ProxyService

__all__ = [
    "CORE_SERVICES",
    "SERVICE_NAMES",
    "Endpoints",
    "ServiceError",
    "ServiceStatus",
    "Settings",
    "endpoints",
    "ensure_up",
    "status",
    "stop_all",
]

_SERVICES: dict[str, type[Service]] = {
    cls.name: cls
    for cls in (
        KafkaService,
        PostgresService,
        RedisService,
        S3ProxyService,
        PrometheusService,
        PulsarService,
        ApicurioService,
    )
}
SERVICE_NAMES: tuple[str, ...] = tuple(_SERVICES)
#: What `ensure_up()` starts when not told which.
CORE_SERVICES: tuple[str, ...] = tuple(n for n in SERVICE_NAMES if n not in ("pulsar", "registry"))


@dataclass(frozen=True)
class Endpoints:
    """How clients reach the services (they are fixed by the settings, running or not)."""

    kafka_bootstrap: str  # "127.0.0.1:39092"
    postgres_dsn: str  # "postgresql://postgres@127.0.0.1:35432/mdstream"
    redis_url: str  # "redis://127.0.0.1:36379/0"
    pulsar_url: str  # "pulsar://127.0.0.1:36650"
    pulsar_admin_url: str  # "http://127.0.0.1:38080"
    schema_registry_url: str  # "http://127.0.0.1:38081/apis/ccompat/v7"
    s3_endpoint: str  # "http://127.0.0.1:39000"
    prometheus_url: str = ""  # "http://127.0.0.1:39090"


def _select(only: Sequence[str] | None, settings: Settings | None) -> list[Service]:
    settings = settings or Settings.from_env()
    names = list(only) if only else list(SERVICE_NAMES)
    unknown = sorted(set(names) - set(_SERVICES))
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown}; choose from {list(SERVICE_NAMES)}")
    return [_SERVICES[name](settings) for name in SERVICE_NAMES if name in names]


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One up/down at a time per run dir, across processes (tests, CLI, other engineers)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with (settings.run_dir / "services.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def endpoints(settings: Settings | None = None) -> Endpoints:
    """The addresses for `settings` (default: from the environment), without starting anything."""
    settings = settings or Settings.from_env()
    return Endpoints(
        kafka_bootstrap=KafkaService(settings).address,
        postgres_dsn=PostgresService(settings).address,
        redis_url=RedisService(settings).address,
        pulsar_url=PulsarService(settings).address,
        pulsar_admin_url=PulsarService(settings).admin_url,
        schema_registry_url=ApicurioService(settings).address,
        s3_endpoint=S3ProxyService(settings).address,
        prometheus_url=PrometheusService(settings).address,
    )


def ensure_up(
    only: Sequence[str] | None = None, settings: Settings | None = None, timeout: float = 180.0
) -> Endpoints:
    """Start whatever is not running, wait until every requested service is usable
    (default: the core services)."""
    settings = settings or Settings.from_env()
    services = _select(only or CORE_SERVICES, settings)
    deadline = time.monotonic() + timeout
    with _locked(settings):
        missing = sorted({pkg for service in services for pkg in service.missing_packages()})
        if missing:
            apt_install(missing)
        # Launch everything first (Kafka's JVM boots while PostgreSQL and Redis start) ...
        for service in services:
            if service.pid() is None:
                service.start()
        # ... then wait; a service that was already running only gets its health re-checked.
        for service in services:
            service.wait_ready(deadline)
    return endpoints(settings)


def stop_all(only: Sequence[str] | None = None, settings: Settings | None = None) -> list[str]:
    """Stop the running services (no-op for those already down); returns the names stopped."""
    settings = settings or Settings.from_env()
    with _locked(settings):
        stopped = [service.name for service in _select(only, settings) if service.stop()]
    if not stopped:
        say("nothing to stop")
    return stopped


def status(
    only: Sequence[str] | None = None, settings: Settings | None = None
) -> list[ServiceStatus]:
    """Cheap check (pid alive + port accepting) for each requested service (default: core)."""
    return [service.status() for service in _select(only or CORE_SERVICES, settings)]
