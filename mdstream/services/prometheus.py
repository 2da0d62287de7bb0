"""Prometheus from Debian's `prometheus` package, our own instance: loopback only, our config.

Not the Debian systemd service: it runs with `--config.file` in the run dir, scraping the targets
written to `targets.json` (file service discovery, re-read live, so tests and `mdstream top` can
point it at whatever processes run) and evaluating the alerting rules of `ops/rules/`.
`promtool` comes with the same package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from mdstream.services.base import Service, ServiceError, say
from mdstream.services.config import HOST, REPO_ROOT

RULES_DIR = REPO_ROOT / "ops" / "rules"


class PrometheusService(Service):
    name = "prometheus"

    #: Scrape and rule evaluation interval; short, so alerts and tests move in seconds.
    interval_s = 2

    @property
    def port(self) -> int:
        return self.settings.prometheus_port

    @property
    def address(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "prometheus.pid"

    @property
    def markers(self) -> tuple[str, ...]:
        return ("prometheus", f"--web.listen-address={HOST}:{self.port}")

    @property
    def log_file(self) -> Path:
        return self.home / "prometheus.log"

    @property
    def targets_file(self) -> Path:
        return self.home / "targets.json"

    @property
    def rules_dir(self) -> Path:
        """Rule files Prometheus loads (`*.yml`); copied from ops/rules at start."""
        return self.home / "rules"

    def missing_packages(self) -> list[str]:
        return [] if shutil.which("prometheus") and shutil.which("promtool") else ["prometheus"]

    def config_text(self) -> str:
        i = f"{self.interval_s}s"
        return (
            f"global:\n  scrape_interval: {i}\n  evaluation_interval: {i}\n"
            f"rule_files:\n  - {self.rules_dir}/*.yml\n"
            "scrape_configs:\n  - job_name: mdstream\n    file_sd_configs:\n"
            f"      - files: [{self.targets_file}]\n        refresh_interval: {i}\n"
        )

    def start(self) -> None:
        self.check_port_free()
        self.home.mkdir(parents=True, exist_ok=True)
        self.rules_dir.mkdir(exist_ok=True)
        for rules in RULES_DIR.glob("*.yml"):
            shutil.copy(rules, self.rules_dir / rules.name)
        if not self.targets_file.exists():
            set_targets(self.targets_file, [])
        conf = self.home / "prometheus.yml"
        conf.write_text(self.config_text())
        say(f"starting prometheus on {HOST}:{self.port}")
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [
                    shutil.which("prometheus") or "prometheus",
                    f"--config.file={conf}",
                    f"--storage.tsdb.path={self.home / 'data'}",
                    "--storage.tsdb.retention.time=1d",
                    f"--web.listen-address={HOST}:{self.port}",
                    "--web.enable-lifecycle",  # POST /-/reload after rules change
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")

    def wait_ready(self, deadline: float) -> None:
        self.wait_port(deadline)
        while True:
            try:
                with urllib.request.urlopen(f"{self.address}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self.failure("is not ready")
            time.sleep(0.2)


def set_targets(path: Path, targets: Iterable[tuple[str, str, str]]) -> None:
    """Write the file-SD targets: (host:port, kind, name) → labels kind and name on every series.
    Replaced atomically; Prometheus picks it up at its next refresh."""
    groups = [
        {"targets": [address], "labels": {"kind": kind, "name": name}}
        for address, kind, name in targets
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)


def install_rules(service: PrometheusService, files: Sequence[Path]) -> None:
    """Replace the loaded rule files and ask Prometheus to reload them."""
    for old in service.rules_dir.glob("*.yml"):
        old.unlink()
    for f in files:
        shutil.copy(f, service.rules_dir / f.name)
    request = urllib.request.Request(f"{service.address}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        if resp.status != 200:
            raise ServiceError(f"prometheus reload failed: {resp.status}")
