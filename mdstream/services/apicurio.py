"""Apicurio Registry 3.x (Confluent-compatible API at /apis/ccompat/v7), in-memory storage.

Its runnable archive comes from Maven Central; it needs Java 21 or newer, looked for under
/usr/lib/jvm (or `MDSTREAM_JAVA21_HOME`): the machine's Temurin JDK (Debian 12 packages no Java 21).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from mdstream.services.base import Service, ServiceError, require_tool, say
from mdstream.services.config import APICURIO_VERSION, HOST, REPO_ROOT

POM = REPO_ROOT / "services" / "apicurio" / "pom.xml"
_MVN_HINT = "Apicurio's archive is fetched from Maven Central with Maven (apt-get install -y maven)"
CCOMPAT = "/apis/ccompat/v7"


def _java_major(home: Path) -> int:
    try:
        text = (home / "release").read_text()
    except OSError:
        return 0
    match = re.search(r'JAVA_VERSION="(\d+)', text)
    return int(match.group(1)) if match else 0


def find_java21() -> Path | None:
    """A `java` of version 21 or newer: MDSTREAM_JAVA21_HOME, else the newest under /usr/lib/jvm."""
    explicit = os.environ.get("MDSTREAM_JAVA21_HOME")
    homes = [Path(explicit)] if explicit else sorted(Path("/usr/lib/jvm").glob("*"))
    found = [(h, _java_major(h)) for h in homes if (h / "bin" / "java").exists()]
    found = [(h, v) for h, v in found if v >= 21]
    return max(found, key=lambda hv: hv[1])[0] / "bin" / "java" if found else None


class ApicurioService(Service):
    name = "registry"

    @property
    def port(self) -> int:
        return self.settings.registry_port

    @property
    def address(self) -> str:
        """What MDSTREAM_SCHEMA_REGISTRY_URL takes: the Confluent-compatible API's root."""
        return f"http://{HOST}:{self.port}{CCOMPAT}"

    @property
    def pid_file(self) -> Path:
        return self.home / "registry.pid"

    @property
    def markers(self) -> tuple[str, ...]:
        return ("quarkus-run.jar", f"-Dquarkus.http.port={self.port}")

    @property
    def log_file(self) -> Path:
        return self.home / "registry.log"

    def _app(self) -> Path:
        """Unpack the runnable archive once into the cache (atomically)."""
        app = self.settings.apicurio_app_dir
        if not (app / "quarkus-run.jar").exists():
            mvn = require_tool("mvn", _MVN_HINT)
            staging = app.with_name(f"app.tmp-{os.getpid()}")
            say(f"fetching Apicurio Registry {APICURIO_VERSION} (~160 MB) into {app}")
            done = subprocess.run(
                [mvn, "-q", "-B", "-f", str(POM), "dependency:unpack",
                 f"-DoutputDirectory={staging}", f"-Dapicurio.version={APICURIO_VERSION}"],
                capture_output=True, text=True,
            )  # fmt: skip
            shutil.rmtree(f"{staging}.markers", ignore_errors=True)
            if done.returncode != 0 or not (staging / "quarkus-run.jar").exists():
                shutil.rmtree(staging, ignore_errors=True)
                raise ServiceError(f"mvn failed to fetch Apicurio:\n{done.stdout}{done.stderr}")
            shutil.rmtree(app, ignore_errors=True)
            app.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(app)
        return app / "quarkus-run.jar"

    def start(self) -> None:
        java = find_java21()
        if java is None:
            raise ServiceError(
                "Apicurio needs Java 21+: none under /usr/lib/jvm; install a JDK 21+ there or"
                " point MDSTREAM_JAVA21_HOME at one"
            )
        self.check_port_free()
        jar = self._app()
        self.home.mkdir(parents=True, exist_ok=True)
        command = [
            str(java), "-Xms128m", "-Xmx512m", "-XX:+ExitOnOutOfMemoryError",
            f"-Dquarkus.http.host={HOST}", f"-Dquarkus.http.port={self.port}",
            # Health/metrics interface: loopback, next to the API port (its default is *:9000).
            f"-Dquarkus.management.host={HOST}", f"-Dquarkus.management.port={self.port + 1}",
            # Its default is NONE; the project's contracts evolve BACKWARD.
            "-Dapicurio.rules.global.compatibility=BACKWARD",
            "-jar", str(jar),
        ]  # fmt: skip
        say(f"starting the schema registry on {self.address}")
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{process.pid}\n")

    def stop(self) -> bool:
        stopped = super().stop()
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def wait_ready(self, deadline: float) -> None:
        self.wait_port(deadline)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise self.failure("exited during start-up")
            try:
                with urllib.request.urlopen(f"{self.address}/subjects", timeout=5) as response:
                    json.loads(response.read())
                return
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = exc
            time.sleep(0.3)
        raise self.failure("answers no request in time", last)
