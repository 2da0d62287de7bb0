"""Operations on the real broker and a real Prometheus scraping a running pipeline.

One worker, an ingest process's feed (per provider a RawBatcher under the throttle controller,
in this process, serving /metrics), and our Prometheus instance scraping both with the shipped
rules (their `for:` and range durations ÷10, so alerts move in seconds). The worker is slowed
(SIGSTOP/SIGCONT duty cycle): lag rises, throttling engages, lag recovers and throttling goes
back; then it is stopped outright: WorkerStalled fires. Every rule expression and every dashboard
panel returns series, and the outputs equal the batch recomputation of the raw topic.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdstream.bus.kafka import read_all
from mdstream.core.contracts import ALERT, DEAD_LETTER, NORMALIZED, ContractSet
from mdstream.core.processor import RawMessage, recompute
from mdstream.core.simulate import INSTRUMENTS, FeedSpec, generate
from mdstream.ingest.batcher import BatchPolicy, RawBatcher
from mdstream.ops.backpressure import Target, ThrottleController
from mdstream.ops.lag import LagMonitor
from mdstream.ops.server import OpsServer
from mdstream.ops.throttle import ThrottleLimits
from mdstream.ops.worker import key_partition
from mdstream.providers.base import ProviderTick
from mdstream.providers.fields import quote
from mdstream.services import Endpoints
from mdstream.services.config import Settings as ServiceSettings
from mdstream.services.prometheus import PrometheusService, install_rules, set_targets
from tests.test_ops_unit import DASHBOARD, RULES, panel_exprs
from tests.workers import Deployment, Worker, free_port

pytestmark = [pytest.mark.services]

CONTRACTS = ContractSet.load()
LIMITS = ThrottleLimits(lag_engage=200, lag_severe=2000, lag_release=50, hold_s=3)
# Rules and panels whose metrics come from processes this rig does not run (a websocket feed
# with its Redis breaker, the PostgreSQL bar sink); their own tests cover those metrics.
NOT_RUN_HERE = {
    "ProviderUnavailable",
    "ProviderDisconnected",
    "StorageWriteFailures",
    "StoreDown",
    "Providers: connected / breaker state",
    "Sink rows /s by table",
    "Sink write p99",
}


def _scaled_rules(text: str) -> str:
    """The same rules with `for:` and range durations divided by 10 (1m → 6s)."""

    def tenth(m: re.Match[str]) -> str:
        return f"{m.group(1)}{int(m.group(2)) * 6}s{m.group(3)}"

    return re.sub(r"(for: |\[)(\d+)m(\]|\s|$)", tenth, text, flags=re.M)


def _strip_thresholds(expr: str) -> list[str]:
    """The series-producing parts of an alert expression: `A > 1 and B == 0` → [A, B]."""
    parts = re.split(r"\s+(?:and|or|unless)\s+", " ".join(expr.split()))
    return [re.sub(r"\s*(?:>|<|==|!=|>=|<=)\s*[-+0-9.e]+\s*$", "", p) for p in parts]


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def firing(self) -> set[str]:
        alerts = self.get("/api/v1/alerts")["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    def wait_for(self, what: str, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not (got := check()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(1)
        return got


class Ingest(threading.Thread):
    """The generated feed through one throttled RawBatcher per provider, paced in real time;
    each trade is followed by three quotes (the book moving), which coalescing merges."""

    def __init__(self, dep: Deployment, feed: FeedSpec, port: int) -> None:
        super().__init__(daemon=True)
        self.dep, self.feed, self.port = dep, feed, port
        self.controller: ThrottleController | None = None
        self.error: BaseException | None = None
        self.submitted = 0
        self.published = threading.Event()  # every tick of the feed acknowledged by Kafka
        self.release = threading.Event()  # the test is done with /metrics and the controller

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc

    async def _main(self) -> None:
        topics = self.dep.settings.topics
        names = [p.name for p in self.feed.providers]
        batchers = {
            name: RawBatcher(
                self.dep.bootstrap,
                topics.raw,
                topics.dead_letter,
                CONTRACTS,
                BatchPolicy(max_ticks=500, max_delay_s=0.25),
            )
            for name in names
        }
        monitor = LagMonitor(self.dep.bootstrap, self.dep.app_id, [topics.raw])
        self.controller = ThrottleController(
            monitor,
            [Target(n, n == names[0], b) for n, b in batchers.items()],
            LIMITS,
            interval_s=1.0,
        )
        server = OpsServer(self.port)
        control = asyncio.create_task(self.controller.run())
        start_wall = time.monotonic()
        try:
            for msg in generate(self.feed):
                if not isinstance(msg.value, dict):
                    continue  # garbage bytes: an ingest process never publishes those
                delay = (msg.publish_ns - self.feed.start_ns) / 1e9 - (
                    time.monotonic() - start_wall
                )
                if delay > 0:
                    await asyncio.sleep(delay)
                batch = msg.value
                provider, symbol = batch["source"], batch["instrument"]["symbol"]
                for tick in batch["ticks"]:
                    await batchers[provider].submit(ProviderTick(provider, symbol, tick))
                    for i, spread in enumerate((3e-4, 2e-4, 1e-4)):  # the book moves
                        q = quote(
                            tick["timestamp"] + i,
                            tick["price"] * (1 - spread),
                            tick["price"] * (1 + spread),
                            provider_ts_ns=tick["provider_timestamp"] + i,
                        )
                        await batchers[provider].submit(ProviderTick(provider, symbol, q))
                    self.submitted += 4
            for b in batchers.values():
                await b.close()
            self.published.set()
            await asyncio.to_thread(self.release.wait)  # keep /metrics for the test's queries
        finally:
            control.cancel()
            server.close()
            monitor.close()


def _strip(record: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in record.items() if k != "timestamp"},
        sort_keys=True,
        default=lambda b: b.hex() if isinstance(b, bytes) else str(b),
    )


def _assert_equals_recomputation(dep: Deployment) -> dict[str, int]:
    topics = dep.settings.topics
    raw = read_all(dep.bootstrap, [topics.raw], idle_s=2)
    for rec in raw:  # our producers' placement is what the table router assumes
        assert rec.partition == key_partition(rec.key, dep.partitions), rec.key
    expected, _, _ = recompute(
        (RawMessage(r.value, r.key, r.topic, r.partition, r.offset) for r in raw),
        dep.settings.pipeline,
        CONTRACTS,
    )
    got: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for rec in read_all(dep.bootstrap, topics.outputs(), idle_s=3):
        name, value = CONTRACTS.decode(rec.value)
        got[name].append(value)
    assert sorted(map(_strip, got[NORMALIZED])) == sorted(map(_strip, expected.bars))
    assert sorted(map(_strip, got[ALERT])) == sorted(map(_strip, expected.alerts))
    assert sorted(map(_strip, got[DEAD_LETTER])) == sorted(map(_strip, expected.dead_letters))
    return {"raw": len(raw), "bars": len(got[NORMALIZED]), "alerts": len(got[ALERT])}


@pytest.fixture
def prometheus(services: Endpoints, tmp_path: Path) -> Iterator[tuple[Prom, PrometheusService]]:
    service = PrometheusService(ServiceSettings.from_env())
    scaled = tmp_path / "mdstream.yml"
    scaled.write_text(_scaled_rules(RULES.read_text()))
    install_rules(service, [scaled])
    yield Prom(service.address), service
    set_targets(service.targets_file, [])
    install_rules(service, [RULES])


def _slow_down(worker: Worker, until: Any, timeout: float, stopped: float = 0.9) -> None:
    """Deliberately slow worker: stopped `stopped` of every second, until `until()`."""
    pgid = worker.proc.pid
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, "slowing the worker changed nothing"
        os.killpg(pgid, signal.SIGSTOP)
        time.sleep(stopped)
        os.killpg(pgid, signal.SIGCONT)
        time.sleep(1 - stopped)


def test_slowed_worker_throttles_ingest_and_a_stalled_one_fires_the_alert(
    services: Endpoints, tmp_path: Path, prometheus: tuple[Prom, PrometheusService]
) -> None:
    prom, service = prometheus
    dep = Deployment(
        bootstrap=services.kafka_bootstrap,
        root=tmp_path,
        extra_env={"MDSTREAM_TRANSACTION_TIMEOUT_MS": "90000", "MDSTREAM_STALL_S": "10"},
    )
    dep.create_topics()
    worker = dep.worker("w")
    worker.start()
    worker.wait_ready()
    ingest = Ingest(
        dep,
        FeedSpec(duration_s=75, seed=5, instruments=INSTRUMENTS[:3], start_ns=time.time_ns()),
        free_port(),
    )
    set_targets(
        service.targets_file,
        [
            (f"127.0.0.1:{worker.web_port}", "worker", "w"),
            (f"127.0.0.1:{ingest.port}", "ingest", "feed"),
        ],
    )
    try:
        ingest.start()
        prom.wait_for("both targets up", lambda: len(prom.query("up == 1")) == 2, 30)
        ctl = ingest.controller
        assert ctl is not None
        prom.wait_for("unthrottled at full speed", lambda: ctl.state.level == 0, 60)
        # Stopped 98% of every second: slower than the feed however fast the worker is.
        _slow_down(worker, lambda: ctl.state.level > 0, timeout=60, stopped=0.98)
        time.sleep(3)  # throttling shows in Prometheus
        engaged = [h for h in ctl.history if h[1] > 0]
        assert engaged, f"no throttling while slowed: {ctl.history[-20:]}"
        prom.wait_for(
            "throttling released and lag back under the limit",
            lambda: (
                ctl.state.level == 0
                and ctl.history[-1][2] is not None
                and ctl.history[-1][2] <= LIMITS.lag_release
            ),
            60,
        )
        peak = max(h[2] or 0 for h in ctl.history)
        assert peak >= LIMITS.lag_engage
        assert prom.query('max_over_time(ALERTS{alertname="IngestThrottled"}[5m])')
        assert prom.query('sum(mdstream_throttled_ticks_total{action="coalesced"}) > 0')
        assert prom.query('max_over_time(mdstream_throttle_level{provider="alpaca"}[5m]) > 0')

        os.killpg(worker.proc.pid, signal.SIGSTOP)  # a stalled worker
        try:
            prom.wait_for("WorkerStalled", lambda: "WorkerStalled" in prom.firing(), 60)
        finally:
            os.killpg(worker.proc.pid, signal.SIGCONT)

        assert ingest.published.wait(120) and ingest.error is None, ingest.error
        if not worker.alive():  # fenced after the stop: it crashed, a restart recovers
            worker.start()
            worker.wait_ready()
        dep.wait_caught_up(timeout=180)
        time.sleep(3 * PrometheusService.interval_s)

        rules = yaml.safe_load(Path(service.rules_dir / "mdstream.yml").read_text())
        empty = []
        for rule in rules["groups"][0]["rules"]:
            if rule["alert"] in NOT_RUN_HERE:
                continue
            for part in _strip_thresholds(rule["expr"]):
                if part.startswith("up{") or prom.query(part):
                    continue
                empty.append(f"{rule['alert']}: {part}")
        assert not empty, "rule expressions without series:\n" + "\n".join(empty)
        panels = [
            t for t, e in panel_exprs().items() if t not in NOT_RUN_HERE and not prom.query(e)
        ]
        assert not panels, f"dashboard panels without data: {panels} ({DASHBOARD.name})"
    finally:
        ingest.release.set()
        ingest.join(60)
        dep.kill_all()
    summary = _assert_equals_recomputation(dep)
    changes = [(round(t - ctl.history[0][0], 1), level, lag) for t, level, lag in _changes(ctl)]
    print(f"\nthrottle changes (s, level, lag): {changes}; peak lag {peak}; {summary}")


def _changes(ctl: ThrottleController) -> list[tuple[float, int, int | None]]:
    out, level = [], 0
    for t, lvl, lag in ctl.history:
        if lvl != level:
            out.append((t, lvl, lag))
            level = lvl
    return out
