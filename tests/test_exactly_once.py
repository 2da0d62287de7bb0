"""Exactly-once that survives crashes, on the real broker.

A steady generated feed runs while workers are SIGKILLed at random moments and restarted (and, in
the second test, while two workers rebalance). Afterwards every output topic is read with
`isolation_level=read_committed` and compared with a batch recomputation of the whole raw topic:
every bar, alert and dead letter must be there exactly once with the recomputed values, and the
tables' committed changelogs must hold exactly the recomputed state.
"""

from __future__ import annotations

import collections
import json
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mdstream.bus.kafka import read_all
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import ALERT, DEAD_LETTER, NORMALIZED, RAW_BATCH, ContractSet
from mdstream.core.processor import RawMessage, recompute
from mdstream.core.simulate import FeedSpec, generate
from mdstream.services import Endpoints
from tests.workers import Deployment, FeedThread, Worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

CONTRACTS = ContractSet.load()


def _strip(record: dict[str, Any]) -> str:
    """A canonical form without the emission wall-clock time, the one non-deterministic field."""
    return json.dumps(
        {k: v for k, v in record.items() if k != "timestamp"},
        sort_keys=True,
        default=lambda b: b.hex() if isinstance(b, bytes) else str(b),
    )


def _changelog_state(dep: Deployment, table: str) -> dict[str, Any]:
    latest: dict[str, Any] = {}
    for rec in read_all(dep.bootstrap, [f"{dep.app_id}-{table}-changelog"], idle_s=2):
        key = json.loads(rec.key)
        if rec.value is None:
            latest.pop(key, None)
        else:
            latest[key] = json.loads(rec.value)
    return latest


def _window(bar: dict[str, Any]) -> tuple:
    """A bar's identity: a late trade re-issues its window's bar under the next revision."""
    return (bar["instrument"]["symbol"], bar["interval"], bar["window_start"], bar["revision"])


def _assert_same_bars(streamed: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    def by_window(bars: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        return {_window(b): b for b in bars}

    got, want = by_window(streamed), by_window(expected)
    diffs = [
        f"{w}: streamed {got.get(w, {}).get('ohlcv')} expected {want.get(w, {}).get('ohlcv')}"
        for w in sorted(set(got) | set(want))
        if _strip(got.get(w, {})) != _strip(want.get(w, {}))
    ]
    assert not diffs, f"{len(diffs)} bars differ from the recomputation:\n" + "\n".join(diffs[:10])


def _consensus_from_web_view(worker: Worker, symbols: list[str]) -> dict[str, Any]:
    """What the worker's debugging web view (/table/<name>/<key>/) serves for these keys."""
    served = {}
    for symbol in symbols:
        url = f"http://127.0.0.1:{worker.web_port}/table/consensus/{symbol}/"
        with urllib.request.urlopen(url, timeout=10) as resp:
            served[symbol] = json.loads(resp.read())
    return served


def _verify(dep: Deployment) -> dict[str, int]:
    topics = dep.settings.topics
    raw = read_all(dep.bootstrap, [topics.raw], idle_s=2)
    expected, state, consensus = recompute(
        (RawMessage(r.value, r.key, r.topic, r.partition, r.offset) for r in raw),
        dep.settings.pipeline,
        CONTRACTS,
    )
    out = read_all(dep.bootstrap, topics.outputs(), idle_s=3)
    by_contract: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for rec in out:
        name, value = CONTRACTS.decode(rec.value)
        by_contract[name].append(value)

    bars = by_contract[NORMALIZED]
    windows = collections.Counter(map(_window, bars))
    twice = [w for w, n in windows.items() if n > 1]
    assert not twice, f"{len(twice)} bar windows emitted more than once, e.g. {twice[:3]}"
    _assert_same_bars(bars, expected.bars)

    alerts = by_contract[ALERT]
    assert len({a["eventId"] for a in alerts}) == len(alerts), "an alert was emitted twice"
    assert sorted(map(_strip, alerts)) == sorted(map(_strip, expected.alerts))
    by_severity = read_all(dep.bootstrap, topics.alerts_by_severity().values(), idle_s=2)
    routed = [CONTRACTS.decode(r.value)[1] for r in by_severity]
    assert sorted(map(_strip, routed)) == sorted(map(_strip, alerts)), "severity topics differ"
    for rec, alert in zip(by_severity, routed, strict=True):
        assert rec.topic.endswith("." + alert["severity"].lower()), (rec.topic, alert)

    published = [CONTRACTS.decode(r.value)[1] for r in read_all(dep.bootstrap, [topics.consensus])]
    assert sorted(map(_strip, published)) == sorted(map(_strip, expected.consensus_events))

    dead = by_contract[DEAD_LETTER]
    assert sorted(map(_strip, dead)) == sorted(map(_strip, expected.dead_letters))

    assert _changelog_state(dep, "pipeline-state") == state, "table state ≠ recomputed state"
    assert _changelog_state(dep, "consensus") == consensus, "consensus table ≠ recomputed"

    # The feed's faults all surface: bad ticks and garbage frames dead-lettered, outages alerted.
    stages = collections.Counter(d["stage"] for d in dead)
    kinds = collections.Counter((a["alert_type"], a["status"]) for a in alerts)
    assert stages["decode"] > 0 and stages["validate"] > 0, stages
    assert kinds[("STALE_DATA", "RAISED")] > 0 and kinds[("OUTLIER_DETECTED", "RAISED")] > 0
    return {"raw": len(raw), "bars": len(bars), "alerts": len(alerts), "dead_letters": len(dead)}


@pytest.fixture
def deployment(services: Endpoints, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(bootstrap=services.kafka_bootstrap, root=tmp_path)
    dep.create_topics()
    yield dep
    dep.kill_all()


def test_sigkill_restarts_keep_exactly_once(deployment: Deployment) -> None:
    rng = random.Random(20261124)
    feed = FeedThread(deployment, FeedSpec(duration_s=50, seed=11), pace=2.5)
    worker = deployment.worker("w1")
    worker.start()
    worker.wait_ready()
    feed.start()
    kills = []
    for _ in range(3):
        time.sleep(rng.uniform(2.0, 6.0))
        kills.append(deployment.committed_lag())
        worker.kill()
        worker.start()
        worker.wait_ready()
    feed.join(120)
    assert feed.error is None and not feed.is_alive()
    deployment.wait_caught_up(timeout=240)
    served = _consensus_from_web_view(worker, ["AAPL", "SPY", "NVDA"])
    assert worker.stop() == 0, worker.log_text()[-3000:]
    assert "unclean shutdown detected" in worker.log_text()
    summary = _verify(deployment)
    assert served == {
        k: v for k, v in _changelog_state(deployment, "consensus").items() if k in served
    }, "the table web view disagrees with the committed table"
    print(f"\nSIGKILL x{len(kills)} (lag at kill {kills}): {summary}")


def test_two_workers_rebalance_and_crash_keep_exactly_once(deployment: Deployment) -> None:
    """Also on a transactional input: its commit markers and aborted records are offsets
    with no data, which must be stepped over, never waited for nor taken for lost messages."""
    feed = FeedThread(
        deployment,
        FeedSpec(duration_s=50, seed=12),
        pace=2.5,
        transaction_size=40,
        abort_every=7,
    )
    a, b = deployment.worker("a"), deployment.worker("b")
    a.start()
    a.wait_ready()
    feed.start()
    time.sleep(3)
    b.start()  # rebalance: a hands over half of the partitions
    b.wait_ready()
    time.sleep(3)
    a.kill()  # b must take over a's partitions, fencing a's open transactions
    time.sleep(4)
    a.start()  # and rebalance again
    a.wait_ready()
    feed.join(120)
    assert feed.error is None and not feed.is_alive()
    deployment.wait_caught_up(timeout=240)
    assert b.stop() == 0, b.log_text()[-3000:]
    assert a.stop() == 0, a.log_text()[-3000:]
    assert feed.aborted > 0
    summary = _verify(deployment)
    print(f"\ntwo workers, rebalance + SIGKILL, transactional input: {summary}")


def test_recomputation_is_sensitive_to_a_duplicate() -> None:
    """The check above is not vacuous: one raw batch processed twice changes the expected output."""
    msgs = [m for m in generate(FeedSpec(duration_s=8, seed=3)) if isinstance(m.value, dict)]
    raw = [
        RawMessage(CONTRACTS.encode(RAW_BATCH, m.value), m.key, "raw", 0, i)
        for i, m in enumerate(msgs)
    ]
    once, _, _ = recompute(raw, PipelineConfig(), CONTRACTS)
    replayed = RawMessage(raw[99].value, raw[99].key, "raw", 0, 100)
    later = [RawMessage(r.value, r.key, r.topic, 0, r.offset + 1) for r in raw[100:]]
    twice, _, _ = recompute([*raw[:100], replayed, *later], PipelineConfig(), CONTRACTS)
    assert sorted(map(_strip, once.bars)) != sorted(map(_strip, twice.bars))
