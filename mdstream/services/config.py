"""Where the local services live and which loopback ports they use, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_VERSION = "3.9.1"
PULSAR_VERSION = "4.2.4"
APICURIO_VERSION = "3.3.3"
S3PROXY_VERSION = "2.6.0"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Settings:
    """Everything the service managers need; one instance describes one isolated stack."""

    run_dir: Path
    cache_dir: Path
    kafka_port: int = 39092
    postgres_port: int = 35432
    redis_port: int = 36379
    pulsar_port: int = 36650
    pulsar_web_port: int = 38080
    registry_port: int = 38081
    s3_port: int = 39000
    prometheus_port: int = 39090

    @property
    def kafka_controller_port(self) -> int:
        """The KRaft controller listener sits next to the broker so one variable moves both."""
        return self.kafka_port + 1

    @property
    def kafka_lib_dir(self) -> Path:
        """Jars are shared by every run dir: resolving them from Maven Central is the slow part."""
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "lib"

    @property
    def pulsar_lib_dir(self) -> Path:
        return self.cache_dir / f"pulsar-{PULSAR_VERSION}" / "lib"

    @property
    def apicurio_app_dir(self) -> Path:
        return self.cache_dir / f"apicurio-{APICURIO_VERSION}" / "app"

    @property
    def s3proxy_jar(self) -> Path:
        """One self-contained jar from Maven Central, shared by every run dir like Kafka's."""
        return self.cache_dir / f"s3proxy-{S3PROXY_VERSION}" / "s3proxy.jar"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read MDSTREAM_* variables so CI, tests and developers can move dirs and ports."""
        env = os.environ if env is None else env
        return cls(
            run_dir=Path(env.get("MDSTREAM_RUN_DIR") or REPO_ROOT / ".run").absolute(),
            cache_dir=Path(
                env.get("MDSTREAM_CACHE_DIR") or Path.home() / ".cache" / "mdstream"
            ).absolute(),
            kafka_port=int(env.get("MDSTREAM_KAFKA_PORT") or cls.kafka_port),
            postgres_port=int(env.get("MDSTREAM_POSTGRES_PORT") or cls.postgres_port),
            redis_port=int(env.get("MDSTREAM_REDIS_PORT") or cls.redis_port),
            pulsar_port=int(env.get("MDSTREAM_PULSAR_PORT") or cls.pulsar_port),
            pulsar_web_port=int(env.get("MDSTREAM_PULSAR_WEB_PORT") or cls.pulsar_web_port),
            registry_port=int(env.get("MDSTREAM_REGISTRY_PORT") or cls.registry_port),
            s3_port=int(env.get("MDSTREAM_S3_PORT") or cls.s3_port),
            prometheus_port=int(env.get("MDSTREAM_PROMETHEUS_PORT") or cls.prometheus_port),
        )
