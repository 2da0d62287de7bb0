"""The live page in a real headless Chromium against a running pipeline: generated ticks → the
exactly-once worker → committed bars → `mdstream serve` → the page draws their candles.

Chromium is Debian's (`apt-get install chromium` when it is missing), driven by Playwright's
Python client through `executable_path` (Playwright's own browser download is not used)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mdstream.bus.kafka import decode_records, ensure_topics, read_all
from mdstream.core.contracts import NORMALIZED, ContractSet
from mdstream.core.simulate import FeedSpec
from mdstream.services import Endpoints, ServiceError, ensure_up
from mdstream.services.base import apt_install
from tests.distribution_support import Process, stack_env, wait_for
from tests.workers import Deployment, FeedThread, free_port

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        try:
            apt_install(["chromium"])
        except ServiceError as exc:
            pytest.skip(f"Debian's chromium cannot be installed here: {exc}")
        path = shutil.which("chromium")
    assert path is not None
    return path


def test_the_live_page_draws_the_candles_of_generated_ticks(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = _chromium()
    stack: Endpoints = ensure_up(only=["kafka"])
    dep = Deployment(bootstrap=stack.kafka_bootstrap, root=tmp_path, partitions=2)
    s = dep.settings
    dep.create_topics()
    ensure_topics(stack.kafka_bootstrap, (s.topics.consensus, s.topics.corporate_actions), 2)
    worker = dep.worker("w1")
    port = free_port()
    server = Process(["serve"], {**dep.env(tmp_path / "unused", 0),
                                 **stack_env(stack, dep.app_id, MDSTREAM_SERVE_PORT=str(port))},
                     tmp_path / "serve.log")  # fmt: skip
    worker.start()
    server.start()
    try:
        worker.wait_ready()
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            wait_for(lambda: "serving the live page" in server.log_text(), 60, "serve not up")
            page.goto(f"http://127.0.0.1:{port}/?instruments=AAPL,MSFT&timeframe=1s")
            page.wait_for_function("() => document.getElementById('status').dataset.state"
                                   " === 'open'", timeout=30_000)  # fmt: skip
            # Only now the ticks are generated: whatever the page draws comes from them.
            feed = FeedThread(dep, FeedSpec(duration_s=6, seed=3), pace=None)
            feed.start()
            feed.join(60)
            assert feed.error is None
            page.wait_for_function(
                "() => (window.md.candles['AAPL|1s'] || []).length >= 2", timeout=120_000
            )
            drawn = page.evaluate(
                "() => window.md.candles['AAPL|1s'].map(c => [c.start_ns, c.close])"
            )
            count = page.locator("#chart-AAPL").get_attribute("data-candles")
            latest_row = page.locator("#latest-AAPL").inner_text()
            browser.close()
        assert worker.alive() and server.alive(), server.log_text()[-2000:]
    finally:
        dep.kill_all()
        if server.alive():
            server.kill()
    committed = {
        (v["window_start"], v["ohlcv"]["close"])
        for _, name, v in decode_records(
            read_all(dep.bootstrap, [s.topics.normalized]), ContractSet.load()
        )
        if name == NORMALIZED and v["instrument"]["symbol"] == "AAPL" and v["interval"] == "1s"
    }
    assert committed, "the pipeline produced no AAPL 1 s bar"
    assert {(start, close) for start, close in drawn} <= committed  # every candle is a real bar
    assert int(count) == len(drawn)
    assert str(drawn[-1][1]) in latest_row  # the latest table shows the newest close
