"""The benchmark peers do the work they are credited with: their 1 s bars equal a direct
computation from the same ticks (a group-by, not the peers' streaming code)."""

from __future__ import annotations

import collections
import json
import math
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compare import FaustPeer, Peer, QuixPeer, default_quix_python, run_peer
from benchmarks.pipeline.harness import CONTRACTS, GRACE_MS, Pipeline
from mdstream.bus.kafka import ensure_topics, publish, read_all
from mdstream.core.simulate import FeedMessage, FeedSpec, generate
from mdstream.services import ensure_up

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

PARTITIONS = 2
SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def feed() -> Iterator[tuple[str, str, list[FeedMessage]]]:
    """(bootstrap, raw topic, messages): a few seconds of the generated feed, garbage included."""
    bootstrap = ensure_up(only=["kafka"]).kafka_bootstrap
    run_id = f"peers-test-{uuid.uuid4().hex[:8]}"
    raw = f"{run_id}.raw"
    messages = list(generate(FeedSpec(duration_s=4, seed=11)))
    ensure_topics(bootstrap, [raw], PARTITIONS)
    assert publish(bootstrap, raw, messages, CONTRACTS) == len(messages)
    yield bootstrap, raw, messages
    Pipeline(bootstrap, PARTITIONS, Path("/nonexistent"), "", app_id=run_id).delete_topics()


def direct_1s_bars(messages: list[FeedMessage], grace_ns: int) -> dict[tuple[str, int], tuple]:
    """Final 1 s bars per (symbol, window start), by the peers' stated rules."""
    ticks: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for msg in messages:
        if isinstance(msg.value, dict):
            ticks[msg.value["instrument"]["symbol"]] += msg.value["ticks"]
    bars = {}
    for symbol, seq in ticks.items():
        windows: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        stream_time = 0
        for t in seq:
            start = t["timestamp"] - t["timestamp"] % SECOND
            values = (t["price"], t["volume"])
            valid = t["kind"] == "TRADE" and all(
                v is not None and math.isfinite(v) and v > 0 for v in values
            )
            if valid and start + SECOND + grace_ns > stream_time:  # else late: dropped
                windows[start].append(t)
            stream_time = max(stream_time, t["timestamp"])
        for start, trades in windows.items():
            if start + SECOND + grace_ns <= stream_time:  # closed by a later tick
                by_time = sorted(trades, key=lambda t: t["timestamp"])  # stable: ties by arrival
                prices = [t["price"] for t in trades]
                bars[symbol, start] = (
                    by_time[0]["price"],
                    max(prices),
                    min(prices),
                    by_time[-1]["price"],
                    sum(t["volume"] for t in trades),
                    len(trades),
                )
    return bars


def quix_python() -> str:
    python = default_quix_python()
    has_quix = subprocess.run([python, "-c", "import quixstreams"], check=False).returncode == 0
    if not has_quix:
        pytest.skip(f"no quixstreams for {python} (make .venv-quix/.installed)")
    return python


@pytest.mark.parametrize("kind", ["faust", "quix"])
def test_peer_bars_equal_direct_computation(
    kind: str, feed: tuple[str, str, list[FeedMessage]], tmp_path: Path
) -> None:
    bootstrap, raw, messages = feed
    app_id = f"{raw.removesuffix('.raw')}-{kind}"
    peer: Peer
    if kind == "faust":
        peer = FaustPeer(bootstrap, PARTITIONS, tmp_path, kind, app_id, source=raw)
    else:
        peer = QuixPeer(
            bootstrap, PARTITIONS, tmp_path, kind, app_id, source=raw, python=quix_python()
        )
    _, committed, _ = run_peer(peer, len(messages), timeout_s=40)
    assert committed == len(messages), peer.log_tail()

    got: dict[tuple[str, int], tuple] = {}
    for rec in read_all(bootstrap, [peer.sink], idle_s=2.0):
        bar = json.loads(rec.value)
        if bar["interval"] == "1s":
            key = (bar["symbol"], bar["window_start"])
            assert key not in got, f"{key} emitted twice"
            got[key] = tuple(bar[k] for k in ("open", "high", "low", "close", "volume", "trades"))
    want = direct_1s_bars(messages, int(GRACE_MS * 1_000_000))
    assert len(want) >= 10
    assert got.keys() == want.keys()
    for key, values in want.items():
        assert got[key] == pytest.approx(values), key
