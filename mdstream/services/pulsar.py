"""Apache Pulsar standalone (broker + embedded bookie, RocksDB metadata) from Maven Central jars."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from mdstream.services.base import Service, ServiceError, require_tool, say, tail
from mdstream.services.config import HOST, PULSAR_VERSION, REPO_ROOT

POM = REPO_ROOT / "services" / "pulsar" / "pom.xml"
LOG4J2 = REPO_ROOT / "services" / "pulsar" / "log4j2.properties"
_JAVA_HINT = "Pulsar needs a Java 17 runtime (apt-get install -y openjdk-17-jre-headless)"
_MVN_HINT = "Pulsar's jars are resolved from Maven Central with Maven (apt-get install -y maven)"
# The stock bin/pulsar's module openings: Netty, BookKeeper and the stats reach into the JDK.
_OPENS = [
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.zip=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-opens", "java.base/sun.net=ALL-UNNAMED",
    "--add-opens", "java.management/sun.management=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
]  # fmt: skip


class PulsarService(Service):
    """One standalone node: ~1 GB heap + 1 GB direct memory, started only when asked for."""

    name = "pulsar"
    stop_grace = 30.0

    @property
    def port(self) -> int:
        return self.settings.pulsar_port

    @property
    def address(self) -> str:
        return f"pulsar://{HOST}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.settings.pulsar_web_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "pulsar.pid"

    @property
    def config_file(self) -> Path:
        return self.home / "standalone.conf"

    @property
    def markers(self) -> tuple[str, ...]:
        return ("org.apache.pulsar.PulsarStandaloneStarter", str(self.config_file))

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "pulsar.log"

    @property
    def console_file(self) -> Path:
        return self.home / "logs" / "pulsar.out"

    def _classpath(self) -> str:
        """Resolve the broker jars once into the cache (atomically, so a killed mvn is retried)."""
        lib = self.settings.pulsar_lib_dir
        if not (lib / f"pulsar-broker-{PULSAR_VERSION}.jar").exists():
            mvn = require_tool("mvn", _MVN_HINT)
            staging = lib.with_name(f"lib.tmp-{os.getpid()}")
            say(f"resolving Pulsar {PULSAR_VERSION} jars (~245 MB) from Maven Central into {lib}")
            done = subprocess.run(
                [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                 f"-DoutputDirectory={staging}", f"-Dpulsar.version={PULSAR_VERSION}"],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise ServiceError(f"mvn failed to resolve Pulsar:\n{done.stdout}{done.stderr}")
            shutil.rmtree(lib, ignore_errors=True)
            lib.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(lib)
        return f"{lib}/*"

    def _write_config(self) -> None:
        settings = {
            "clusterName": "standalone",
            "bindAddress": HOST,
            "advertisedAddress": HOST,
            "brokerServicePort": str(self.port),
            "webServicePort": str(self.settings.pulsar_web_port),
            # Empty: the starter picks its RocksDB metadata store (a rocksdb:// value crashes it).
            "metadataStoreUrl": "",
            # One bookie: the defaults of 2 make producers hang.
            "managedLedgerDefaultEnsembleSize": "1",
            "managedLedgerDefaultWriteQuorum": "1",
            "managedLedgerDefaultAckQuorum": "1",
            # Deduplication is switched on per namespace by the mirror's topology set-up.
            "brokerDeduplicationEnabled": "false",
            "allowAutoTopicCreation": "true",
            "allowAutoTopicCreationType": "non-partitioned",
            "authenticationEnabled": "false",
            "authorizationEnabled": "false",
            "functionsWorkerEnabled": "false",
            "systemTopicEnabled": "true",
            "topicLevelPoliciesEnabled": "true",
            "exposeTopicLevelMetricsInPrometheus": "false",
            "brokerShutdownTimeoutMs": "3000",
            # The embedded bookie reads this file too: loopback only (its port is a free
            # ephemeral one that the starter picks; --bookkeeper-port is ignored in 4.x).
            "listeningInterface": "lo",
            "allowLoopback": "true",
            # Group-commit the journal without an fsync per entry: the mirror sends unbatched
            # (broker-side deduplication judges a batch by its first sequence id only).
            "journalSyncData": "false",
            "journalMaxGroupWaitMSec": "1",
            "httpServerEnabled": "false",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    def start(self) -> None:
        java = require_tool("java", _JAVA_HINT)
        self.check_port_free()
        classpath = self._classpath()
        # A standalone's metadata and ledgers must start clean together (the notes' trap:
        # --wipe-data keeps metadata); a test stack has no data worth keeping across starts.
        for sub in ("metadata", "bookkeeper"):
            shutil.rmtree(self.home / sub, ignore_errors=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self._write_config()
        command = [
            java, "-Xms1g", "-Xmx1g", "-XX:MaxDirectMemorySize=1g", "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.net.preferIPv4Stack=true",
            "-Dio.netty.tryReflectionSetAccessible=true", *_OPENS,
            f"-Dlog4j2.configurationFile={LOG4J2}", f"-Dpulsar.log.dir={self.home / 'logs'}",
            "-cp", classpath, "org.apache.pulsar.PulsarStandaloneStarter",
            "--config", str(self.config_file), "--no-functions-worker", "--no-stream-storage",
            "--metadata-dir", str(self.home / "metadata"),
            "--bookkeeper-dir", str(self.home / "bookkeeper"),
        ]  # fmt: skip
        say(f"starting pulsar on {self.address}, admin {self.admin_url} (logs in {self.home})")
        with self.console_file.open("ab") as console:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{process.pid}\n")

    def failure(self, what: str, exc: BaseException | None = None) -> ServiceError:
        return ServiceError(
            f"{super().failure(what, exc)}\n{self.console_file}:\n{tail(self.console_file, 10)}"
        )

    def stop(self) -> bool:
        stopped = super().stop()
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def wait_ready(self, deadline: float) -> None:
        """The broker port, then the admin API lists the standalone cluster and its namespace."""
        self.wait_port(deadline)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise self.failure("exited during start-up")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/admin/v2/clusters", timeout=5) as r:
                    clusters = json.loads(r.read())
                url = f"{self.admin_url}/admin/v2/namespaces/public"
                with urllib.request.urlopen(url, timeout=5) as r:
                    namespaces = json.loads(r.read())
                if "standalone" in clusters and "public/default" in namespaces:
                    return
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
            time.sleep(0.5)
        raise self.failure("admin API not ready in time", last)
