"""An S3-compatible object store on loopback: s3proxy (Apache-2.0) with its filesystem backend.

One jar from Maven Central (``org.gaul:s3proxy:<v>:jar:jar-with-dependencies``), run in its own
JVM. Its access key and secret are generated at the first start into a secret file in the run
dir (mode 0600, never logged); clients read them from there unless ``MDSTREAM_S3_*`` point
elsewhere (see :mod:`mdstream.storage.objectstore`). The default bucket is created when ready.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from mdstream.services.base import Service, ServiceError, require_tool, say
from mdstream.services.config import HOST, S3PROXY_VERSION

DEFAULT_BUCKET = "mdstream"
DEFAULT_REGION = "us-east-1"
_JAVA_HINT = "s3proxy needs a Java 17 runtime (apt-get install -y openjdk-17-jre-headless)"
_MVN_HINT = "s3proxy's jar is fetched from Maven Central with Maven (apt-get install -y maven)"


class S3ProxyService(Service):
    name = "s3proxy"

    @property
    def port(self) -> int:
        return self.settings.s3_port

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "s3proxy.pid"

    @property
    def config_file(self) -> Path:
        return self.home / "s3proxy.properties"

    @property
    def credentials_file(self) -> Path:
        """``{"access_key_id": ..., "secret_access_key": ...}``, readable by the owner only."""
        return self.home / "credentials.json"

    @property
    def markers(self) -> tuple[str, ...]:
        return ("s3proxy", str(self.config_file))

    @property
    def log_file(self) -> Path:
        return self.home / "s3proxy.log"

    def _jar(self) -> Path:
        jar = self.settings.s3proxy_jar
        if not jar.exists():
            mvn = require_tool("mvn", _MVN_HINT)
            staging = jar.parent.with_name(f"{jar.parent.name}.tmp-{os.getpid()}")
            say(f"fetching s3proxy {S3PROXY_VERSION} from Maven Central into {jar.parent}")
            done = subprocess.run(
                [mvn, "-q", "-B", "dependency:copy",
                 f"-Dartifact=org.gaul:s3proxy:{S3PROXY_VERSION}:jar:jar-with-dependencies",
                 f"-DoutputDirectory={staging}"],
                capture_output=True, text=True, cwd=self.settings.cache_dir,
            )  # fmt: skip
            found = list(staging.glob("s3proxy-*.jar"))
            if done.returncode != 0 or not found:
                shutil.rmtree(staging, ignore_errors=True)
                raise ServiceError(f"mvn failed to fetch s3proxy:\n{done.stdout}{done.stderr}")
            found[0].rename(staging / jar.name)
            shutil.rmtree(jar.parent, ignore_errors=True)
            staging.rename(jar.parent)
        return jar

    def credentials(self) -> dict[str, str]:
        """The local store's keys, generated once (a new run dir gets new ones)."""
        if not self.credentials_file.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            creds = {
                "access_key_id": "mdstream-" + secrets.token_hex(6),
                "secret_access_key": secrets.token_urlsafe(30),
            }
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(creds, f)
        return json.loads(self.credentials_file.read_text())

    def start(self) -> None:
        java = require_tool("java", _JAVA_HINT)
        self.check_port_free()
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        jar = self._jar()
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        creds = self.credentials()
        props = {
            "s3proxy.endpoint": self.address,
            "s3proxy.authorization": "aws-v2-or-v4",
            "s3proxy.identity": creds["access_key_id"],
            "s3proxy.credential": creds["secret_access_key"],
            "jclouds.provider": "filesystem",
            "jclouds.filesystem.basedir": str(data),
        }
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in props.items()))
        say(f"starting s3proxy on {self.address} (objects in {data})")
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                [java, "-Xmx256m", "-Djava.net.preferIPv4Stack=true", "-jar", str(jar),
                 "--properties", str(self.config_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{process.pid}\n")

    def stop(self) -> bool:
        stopped = super().stop()
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def wait_ready(self, deadline: float) -> None:
        """Port, then a signed request that creates the default bucket (idempotent)."""
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self.wait_port(deadline)
        creds = self.credentials()
        client = boto3.client(
            "s3",
            endpoint_url=self.address,
            aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"],
            region_name=DEFAULT_REGION,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 1},
            ),
        )
        bucket = os.environ.get("MDSTREAM_S3_BUCKET") or DEFAULT_BUCKET
        while True:
            try:
                names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                if bucket not in names:
                    client.create_bucket(Bucket=bucket)
                return
            except (BotoCoreError, ClientError) as exc:
                if self.pid() is None:
                    raise self.failure("exited during start-up", exc) from exc
                if time.monotonic() > deadline:
                    raise self.failure("answers no S3 request", exc) from exc
                time.sleep(0.3)
