"""The quality wiring on the real broker: a worker routes every alert to the all-alerts topic
and to its severity's topic, publishes the consensus on a compacted topic, and `mdstream
lineage` / `mdstream quality sla` read what it committed."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from mdstream.bus.kafka import publish, read_all
from mdstream.core.contracts import ALERT, CONSENSUS, NORMALIZED, ContractSet
from mdstream.core.processor import RawMessage, recompute
from mdstream.core.quality.reliability import sla_by_provider
from mdstream.core.simulate import INSTRUMENTS, FeedSpec, generate
from mdstream.services import Endpoints
from tests.workers import Deployment

pytestmark = pytest.mark.services

CONTRACTS = ContractSet.load()
MDSTREAM = str(Path(sys.executable).parent / "mdstream")


def _wait_ready(worker: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "Worker]: Ready" not in worker.log_text():
        assert worker.alive(), worker.log_text()[-3000:]
        assert time.monotonic() < deadline, worker.log_text()[-3000:]
        time.sleep(0.3)


@pytest.fixture(scope="module")
def deployment(services: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Any:
    dep = Deployment(bootstrap=services.kafka_bootstrap, root=tmp_path_factory.mktemp("q"))
    dep.create_topics()
    feed = FeedSpec(duration_s=45, bad_tick_rate=0.003, garbage_message_rate=0.002, seed=21,
                    instruments=INSTRUMENTS[:3])  # fmt: skip
    publish(dep.bootstrap, dep.settings.topics.raw, generate(feed), CONTRACTS)
    worker = dep.worker("w1")
    worker.start()
    _wait_ready(worker)
    dep.wait_caught_up(timeout=240)
    worker.stop()
    yield dep
    dep.kill_all()


def test_alerts_reach_their_severity_topic_once(deployment: Deployment) -> None:
    topics = deployment.settings.topics
    by_severity = topics.alerts_by_severity()
    records = read_all(deployment.bootstrap, [topics.alerts, *by_severity.values()], idle_s=2)
    seen: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for rec in records:
        seen[rec.topic].append(CONTRACTS.decode(rec.value, ALERT)[1])
    everything = seen[topics.alerts]
    assert {a["alert_type"] for a in everything} >= {"STALE_DATA", "OUTLIER_DETECTED"}
    routed = [a for sev, name in by_severity.items() for a in seen[name] if a["severity"] == sev]
    assert sum(len(seen[name]) for name in by_severity.values()) == len(routed)  # none misrouted
    assert sorted(a["eventId"] for a in routed) == sorted(a["eventId"] for a in everything)
    # Raised and cleared ends of a condition land on the same severity topic.
    for name in by_severity.values():
        raised = {(a["alert_type"], a["source"], a["instrument"]) for a in seen[name]
                  if a["status"] == "RAISED"}  # fmt: skip
        cleared = {(a["alert_type"], a["source"], a["instrument"]) for a in seen[name]
                   if a["status"] == "CLEARED"}  # fmt: skip
        assert cleared <= raised


def test_consensus_is_published_compacted_and_matches_the_recomputation(
    deployment: Deployment,
) -> None:
    topics = deployment.settings.topics
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.consensus)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["cleanup.policy"].value == "compact"
    raw = read_all(deployment.bootstrap, [topics.raw], idle_s=2)
    expected, _, _ = recompute(
        (RawMessage(r.value, r.key, r.topic, r.partition, r.offset) for r in raw),
        deployment.settings.pipeline,
        CONTRACTS,
    )
    published = [
        CONTRACTS.decode(r.value, CONSENSUS)[1]
        for r in read_all(deployment.bootstrap, [topics.consensus], idle_s=2)
    ]
    strip = lambda e: {k: v for k, v in e.items() if k != "timestamp"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, published))) == sorted(
        map(json.dumps, map(strip, expected.consensus_events))
    )
    latest = {e["instrument"]: e for e in published}
    assert set(latest) == {i.symbol for i in INSTRUMENTS[:3]}
    assert all(e["providers"] >= 1 and e["sources"] for e in latest.values())


def _cli(deployment: Deployment, *args: str) -> str:
    env = deployment.env(deployment.root / "cli", 0)
    done = subprocess.run([MDSTREAM, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_lineage_command_traces_a_committed_bar(deployment: Deployment) -> None:
    bars = [
        CONTRACTS.decode(r.value, NORMALIZED)[1]
        for r in read_all(deployment.bootstrap, [deployment.settings.topics.normalized], idle_s=2)
    ]
    bar = next(b for b in bars if b["interval"] == "1s" and b["ohlcv"]["trade_count"] > 5)
    traced = json.loads(_cli(deployment, "lineage", bar["eventId"]))
    assert traced["consistent"] is True
    assert traced["trades_entered"] == bar["ohlcv"]["trade_count"]
    assert traced["raw_partition"] == bar["lineage"]["raw_partition"]


def test_sla_command_reports_every_provider(deployment: Deployment) -> None:
    out = _cli(deployment, "quality", "sla")
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert set(lines) == {"alpaca", "polygon", "finnhub"}
    raw = read_all(deployment.bootstrap, [deployment.settings.topics.raw], idle_s=2)
    _, state, _ = recompute(
        (RawMessage(r.value, r.key, r.topic, r.partition, r.offset) for r in raw),
        deployment.settings.pipeline,
        CONTRACTS,
    )
    table = sla_by_provider({k: v for k, v in state.items() if not k.startswith("\x00")},
                            250.0, 5000.0)  # fmt: skip
    for name, f in table.items():
        assert f"{f['reliability']:.3f}" in lines[name]
