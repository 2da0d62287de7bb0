"""Apache Kafka as a single KRaft node, run from Maven Central jars in its own JVM."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from mdstream.services.base import Service, ServiceError, require_tool, say, tail
from mdstream.services.config import HOST, KAFKA_VERSION, REPO_ROOT

POM = REPO_ROOT / "services" / "kafka" / "pom.xml"
LOG4J = REPO_ROOT / "services" / "kafka" / "log4j.properties"
PROBE_ID = "mdstream-services-probe"
_JAVA_HINT = "Kafka needs a Java 17 runtime (apt-get install -y openjdk-17-jre-headless)"
_MVN_HINT = "Kafka's jars are resolved from Maven Central with Maven (apt-get install -y maven)"


def _cluster_id() -> str:
    """22-char base64url UUID, as `kafka-storage random-uuid` (never starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


class KafkaService(Service):
    """Small partition counts for the internal topics: the first join/init is slow on 2 cores."""

    name = "kafka"
    stop_grace = 60.0  # controlled shutdown flushes logs and the metadata snapshot

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def markers(self) -> tuple[str, ...]:
        return ("kafka.Kafka", str(self.config_file))

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def console_file(self) -> Path:
        """JVM stdout/stderr: where a crash before log4j is configured ends up."""
        return self.home / "logs" / "kafka.out"

    def _classpath(self) -> str:
        """Resolve the broker jars once into the cache (atomically, so a killed mvn is retried)."""
        lib = self.settings.kafka_lib_dir
        if not (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            mvn = require_tool("mvn", _MVN_HINT)
            staging = lib.with_name(f"lib.tmp-{os.getpid()}")
            say(f"resolving Kafka {KAFKA_VERSION} jars from Maven Central into {lib}")
            done = subprocess.run(
                [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                 f"-DoutputDirectory={staging}", f"-Dkafka.version={KAFKA_VERSION}"],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise ServiceError(f"mvn failed to resolve Kafka jars:\n{done.stdout}{done.stderr}")
            shutil.rmtree(lib, ignore_errors=True)
            staging.rename(lib)
        return f"{lib}/*"

    def _write_config(self) -> None:
        data = self.home / "data"
        cport = self.settings.kafka_controller_port
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{cport}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "4",
            "auto.create.topics.enable": "true",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # Expire hung transactions promptly in tests instead of every 10 s / hour.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
            "transaction.remove.expired.transaction.cleanup.interval.ms": "60000",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    def start(self) -> None:
        java = require_tool("java", _JAVA_HINT)
        self.check_port_free()
        classpath = self._classpath()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        self._write_config()
        jvm = [java, "-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               "-Djava.net.preferIPv4Stack=true",  # plain IPv4 sockets, as the listeners say
               f"-Dlog4j.configuration=file:{LOG4J}", f"-Dkafka.logs.dir={self.home / 'logs'}",
               "-cp", classpath]  # fmt: skip
        if not (self.home / "data" / "meta.properties").exists():
            say(f"formatting Kafka storage in {self.home / 'data'}")
            done = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", _cluster_id(),
                 "-c", str(self.config_file)],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise ServiceError(f"kafka storage format failed:\n{done.stdout}{done.stderr}")
        say(f"starting kafka on {self.address} (logs in {self.home / 'logs'})")
        with self.console_file.open("ab") as console:
            process = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(self.config_file)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,  # survives the caller and its Ctrl-C
            )  # fmt: skip
        self.pid_file.write_text(f"{process.pid}\n")

    def failure(self, what: str, exc: BaseException | None = None) -> ServiceError:
        """Crashes before log4j is set up (bad JVM flag, missing jar) only reach kafka.out."""
        return ServiceError(
            f"{super().failure(what, exc)}\n{self.console_file}:\n{tail(self.console_file, 10)}"
        )

    def stop(self) -> bool:
        stopped = super().stop()
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def wait_ready(self, deadline: float) -> None:
        """Port, then an admin call, then the app's first call: `init_transactions()`."""
        self.wait_port(deadline)
        conf = {"bootstrap.servers": self.address, "log_level": 3}
        admin = AdminClient(conf)
        while True:
            try:
                admin.describe_cluster(request_timeout=5).result()
                break
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise self.failure("answers no admin request", exc) from exc
                time.sleep(0.5)
        producer = Producer({**conf, "transactional.id": PROBE_ID})
        while True:
            try:
                producer.init_transactions(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                error = exc.args[0]
                if time.monotonic() > deadline or not error.retriable():
                    raise self.failure("cannot initialise a transactional producer", exc) from exc
                time.sleep(0.5)
