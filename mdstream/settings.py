"""Settings from the environment (`MDSTREAM_*`), read once per process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mdstream.core.bars import BarConventions
from mdstream.core.config import PipelineConfig
from mdstream.core.instruments import REFERENCE_FILE, InstrumentMaster, load_master
from mdstream.core.quality.alerts import SEVERITIES, severity_topic
from mdstream.core.quality.config import NON_REGULAR_CONDITIONS, QualityConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(f"MDSTREAM_{name}", default)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _instruments(value: str) -> InstrumentMaster | None:
    """`MDSTREAM_INSTRUMENTS`: the reference CSV the worker loads at start, or "none"."""
    return None if value.strip().lower() in ("", "none") else load_master(value)


def _models(value: str) -> tuple[tuple[str, str], ...]:
    """`MDSTREAM_QUALITY_MODEL`: one model file for every group, or 'ETF=a.npz,EQUITY=b.npz'."""
    items = _csv(value)
    if len(items) == 1 and "=" not in items[0]:
        return (("*", items[0]),)
    pairs = [item.partition("=") for item in items]
    if any(not sep for _, sep, _ in pairs):
        raise ValueError(f"expected one model path or group=path pairs, got {value!r}")
    return tuple((group.strip(), path.strip()) for group, _, path in pairs)


def _per_provider_ns(value: str) -> dict[str, int]:
    """'alpaca=1000,finnhub=5000' (milliseconds) → {provider: ns}."""
    out = {}
    for item in _csv(value):
        name, sep, ms = item.partition("=")
        if not sep:
            raise ValueError(f"expected provider=milliseconds, got {item!r}")
        out[name.strip()] = int(float(ms) * 1e6)
    return out


@dataclass(frozen=True)
class Topics:
    raw: str
    normalized: str
    alerts: str
    dead_letter: str
    announcements: str = "md.corporate_actions.announcements"
    corporate_actions: str = "md.corporate_actions.applied"
    consensus: str = "md.quality.consensus"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """A prefix gives a deployment (or a test) its own set of topics on a shared cluster."""
        return cls(
            f"{prefix}md.raw.ticks",
            f"{prefix}md.normalized.bars",
            f"{prefix}md.quality.alerts",
            f"{prefix}md.deadletter",
            f"{prefix}md.corporate_actions.announcements",
            f"{prefix}md.corporate_actions.applied",
            consensus=f"{prefix}md.quality.consensus",
        )

    def outputs(self) -> tuple[str, ...]:
        return (self.normalized, self.alerts, self.dead_letter)

    def corporate_action_topics(self) -> tuple[str, ...]:
        """Announcements in, CorporateActionAppliedEvent out (dead letters share the DLQ)."""
        return (self.announcements, self.corporate_actions)

    def mirrored(self) -> tuple[str, ...]:
        """The committed outputs the Pulsar mirror, the latest-price sink and `serve` read."""
        return (self.normalized, self.consensus, self.alerts, self.corporate_actions)

    def alerts_by_severity(self) -> dict[str, str]:
        """Each alert also goes to its severity's topic (`alerts` stays the all-alerts stream)."""
        return {sev: severity_topic(self.alerts, sev) for sev in SEVERITIES}


@dataclass(frozen=True)
class Settings:
    app_id: str
    broker: str
    store: str
    processing_guarantee: str
    partitions: int
    data_dir: Path
    web_host: str
    web_port: int
    commit_interval_s: float
    transaction_timeout_ms: int
    standby_replicas: int
    schema_registry_url: str | None
    topics: Topics
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    #: PostgreSQL for the storage agents (corporate actions); None: those agents do not run.
    postgres_dsn: str | None = None
    #: Schema the storage agents use (None: the server's search_path); isolates tests.
    postgres_schema: str | None = None
    #: Distribution (mirror, latest prices, WebSocket): Pulsar broker and admin, Redis.
    pulsar_url: str = "pulsar://127.0.0.1:36650"
    pulsar_admin_url: str = "http://127.0.0.1:38080"
    redis_url: str = "redis://127.0.0.1:36379/0"
    #: Kafka topics the mirror forwards (default: `Topics.mirrored()`).
    mirror_topics: tuple[str, ...] = ()
    #: This mirror's static group member id (one per mirror process; "" for dynamic membership).
    mirror_instance: str = "0"
    #: `mdstream serve`: the WebSocket feed and live page (loopback by default).
    serve_host: str = "127.0.0.1"
    serve_port: int = 8765
    #: Seconds without committed progress on a lagging owned partition before /healthz fails.
    stall_s: float = 30.0

    @property
    def bootstrap(self) -> str:
        """host:port of the first broker, for non-faust clients."""
        return self.broker.split("://", 1)[-1].split(";")[0].split(",")[0]

    @classmethod
    def from_env(cls) -> Settings:
        web_port = int(_env("WEB_PORT", "6066"))
        default_data = REPO_ROOT / ".run" / "faust" / f"{socket.gethostname()}-{web_port}"
        return cls(
            app_id=_env("APP_ID", "mdstream"),
            broker=_env("BROKER", f"kafka://127.0.0.1:{_env('KAFKA_PORT', '39092')}"),
            store=_env("STORE", "rocksdict://"),
            processing_guarantee=_env("PROCESSING_GUARANTEE", "exactly_once"),
            partitions=int(_env("PARTITIONS", "4")),
            data_dir=Path(_env("DATA_DIR", str(default_data))),
            web_host=_env("WEB_HOST", "127.0.0.1"),
            web_port=web_port,
            commit_interval_s=float(_env("COMMIT_INTERVAL", "0.2")),
            transaction_timeout_ms=int(_env("TRANSACTION_TIMEOUT_MS", "30000")),
            standby_replicas=int(_env("STANDBY_REPLICAS", "0")),
            schema_registry_url=os.environ.get("MDSTREAM_SCHEMA_REGISTRY_URL") or None,
            topics=Topics.with_prefix(_env("TOPIC_PREFIX", "")),
            pipeline=PipelineConfig(
                intervals=_csv(_env("BAR_INTERVALS", "1s,1m")),
                grace_ns=int(float(_env("GRACE_MS", "1000")) * 1e6),
                provider_priority=_csv(_env("PROVIDER_PRIORITY", "alpaca,polygon,finnhub")),
                outlier_rel=float(_env("OUTLIER_REL", "0.02")),
                conventions=BarConventions(
                    closed=_env("BAR_CLOSED", "left"), label=_env("BAR_LABEL", "start")
                ),
                correction_retention_ns=int(float(_env("CORRECTION_RETENTION_MS", "30000")) * 1e6),
                instruments=_instruments(_env("INSTRUMENTS", str(REFERENCE_FILE))),
                expected_interval_ns=_per_provider_ns(_env("EXPECTED_INTERVAL_MS", "")),
                default_expected_interval_ns=int(
                    float(_env("DEFAULT_EXPECTED_INTERVAL_MS", "1000")) * 1e6
                ),
                quality=QualityConfig(
                    models=_models(_env("QUALITY_MODEL", "")),
                    non_regular_conditions=frozenset(
                        _csv(_env("NON_REGULAR_CONDITIONS", ",".join(NON_REGULAR_CONDITIONS)))
                    ),
                ),
            ),
            postgres_dsn=os.environ.get("MDSTREAM_POSTGRES_DSN") or None,
            postgres_schema=os.environ.get("MDSTREAM_POSTGRES_SCHEMA") or None,
            pulsar_url=_env("PULSAR_URL", f"pulsar://127.0.0.1:{_env('PULSAR_PORT', '36650')}"),
            pulsar_admin_url=_env(
                "PULSAR_ADMIN_URL", f"http://127.0.0.1:{_env('PULSAR_WEB_PORT', '38080')}"
            ),
            redis_url=_env("REDIS_URL", f"redis://127.0.0.1:{_env('REDIS_PORT', '36379')}/0"),
            mirror_topics=_csv(_env("MIRROR_TOPICS", "")),
            mirror_instance=_env("MIRROR_INSTANCE", "0"),
            serve_host=_env("SERVE_HOST", "127.0.0.1"),
            serve_port=int(_env("SERVE_PORT", "8765")),
            stall_s=float(_env("STALL_S", "30")),
        )


def deployment_env(
    app_id: str,
    bootstrap: str,
    data_dir: Path,
    web_port: int,
    partitions: int | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a worker of an isolated deployment on a shared broker: its own app id
    (consumer group, transactional ids, changelogs), topics (prefixed by the app id) and data dir.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        MDSTREAM_APP_ID=app_id,
        MDSTREAM_TOPIC_PREFIX=f"{app_id}.",
        MDSTREAM_BROKER=f"kafka://{bootstrap}",
        MDSTREAM_DATA_DIR=str(data_dir),
        MDSTREAM_WEB_PORT=str(web_port),
    )
    if partitions is not None:
        env["MDSTREAM_PARTITIONS"] = str(partitions)
    return env


settings = Settings.from_env()
