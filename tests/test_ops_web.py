"""Two workers: table web views answer every key from either worker (routed to the owner), the
probes and /metrics answer on both, and `mdstream top` reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mdstream.core.simulate import INSTRUMENTS, FeedSpec, generate
from mdstream.ops.top import scrape, total
from mdstream.ops.worker import key_partition
from mdstream.services import Endpoints
from tests.test_exactly_once import _changelog_state
from tests.workers import Deployment, FeedThread

pytestmark = [pytest.mark.services]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_two_workers_serve_every_key_and_their_probes(services: Endpoints, tmp_path: Path) -> None:
    dep = Deployment(bootstrap=services.kafka_bootstrap, root=tmp_path)
    dep.create_topics()
    a, b = dep.worker("a"), dep.worker("b")
    try:
        a.start()
        a.wait_ready()
        b.start()
        b.wait_ready()
        spec = FeedSpec(duration_s=8, seed=21)
        feed = FeedThread(dep, spec, pace=2.0)
        feed.start()
        feed.join(60)
        assert feed.error is None
        dep.wait_caught_up(timeout=120)
        symbols = [i.symbol for i in INSTRUMENTS]
        owners = {key_partition(s.encode(), dep.partitions) for s in symbols}
        assert len(owners) > 1, "the keys should span partitions of both workers"
        committed = _changelog_state(dep, "consensus")
        ticks_in = 0
        for worker in (a, b):
            for symbol in symbols:
                status, body = _get(worker.web_port, f"/table/consensus/{symbol}/")
                assert status == 200, (worker.name, symbol, status, body[:300])
                assert json.loads(body) == committed[symbol], (worker.name, symbol)
            assert _get(worker.web_port, "/healthz")[0] == 200
            ready, report = _get(worker.web_port, "/readyz")
            assert ready == 200, report
            samples = scrape(f"http://127.0.0.1:{worker.web_port}/metrics")
            assert total(samples, "mdstream_assigned_partitions") == 2  # 4 partitions, 2 workers
            assert total(samples, "mdstream_messages_in_total") > 0
            ticks_in += total(samples, "mdstream_ticks_in_total")
            for stage in ("decode", "validate", "quality", "bars", "produce"):
                assert total(samples, "mdstream_stage_seconds_count", stage=stage) > 0, stage
        # Counted by the agent from the columns it decoded: every tick of the feed, once.
        assert ticks_in == sum(m.n_ticks for m in generate(spec) if isinstance(m.value, dict))
        top = subprocess.run(
            [sys.executable, "-m", "mdstream.cli", "top", "--once", "--interval", "1",
             "--url", f"http://127.0.0.1:{a.web_port}", "--url", f"http://127.0.0.1:{b.web_port}"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
        )  # fmt: skip
        assert top.returncode == 0, top.stderr
        assert f"127.0.0.1:{a.web_port}" in top.stdout and dep.app_id in top.stdout
    finally:
        dep.kill_all()
