"""The whole product on real parts: a provider's websocket → ingestion → Kafka → the exactly-once
pipeline worker → bars → the PostgreSQL bar store → `history.bars`.

The provider is the Alpaca emulator (its documented v2 protocol on loopback). What history
returns must be, window by window, the bars that the batch bar core computes from exactly the
trades the emulator put on the wire.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from emulators.alpaca import AlpacaEmulator
from mdstream.core import bars as barlib
from mdstream.core.contracts import ContractSet
from mdstream.ingest.alpaca import AlpacaFeed
from mdstream.ingest.batcher import RawBatcher
from mdstream.ingest.connection import Backoff, WebSocketFeed
from mdstream.services import Endpoints
from mdstream.storage.bar_sink import BarSink
from mdstream.storage.history import bars_async
from tests.pg import pg  # noqa: F401  (fixture)
from tests.workers import Deployment

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

KEY = "e2e-key-0123456789"
SYMBOLS = ["AAPL", "MSFT"]


async def _ingest(emu: AlpacaEmulator, dep: Deployment) -> WebSocketFeed:
    topics = dep.settings.topics
    batcher = RawBatcher(dep.bootstrap, topics.raw, topics.dead_letter, ContractSet.load())
    feed = WebSocketFeed(
        AlpacaFeed(KEY, "e2e-secret", emu.ws_url), batcher, backoff=Backoff(0.05, 0.2), seed=1
    )
    await feed.subscribe(SYMBOLS)
    task = asyncio.create_task(feed.run())
    seen = -1
    try:  # until the emulator has sent its budget and the feed has read it all
        while not (emu.script.exhausted() and feed.health().messages == seen):
            seen = feed.health().messages
            await asyncio.sleep(0.2)
    finally:
        await feed.stop()
        await task
        await batcher.close()
    return feed


async def test_provider_to_history_bars(services: Endpoints, pg, tmp_path: Path) -> None:  # noqa: F811
    pool, _ = pg
    dep = Deployment(bootstrap=services.kafka_bootstrap, root=tmp_path, partitions=2)
    dep.create_topics()
    worker = dep.worker("w1")
    worker.start()
    try:
        worker.wait_ready()
        async with AlpacaEmulator(
            api_key=KEY,
            secret="e2e-secret",
            budget=1600,
            frame_interval_s=0.01,
            ticks_per_frame=4,
            quote_share=0.2,
        ) as emu:
            feed = await _ingest(emu, dep)
        assert feed.health().errors == 0
        await asyncio.to_thread(dep.wait_caught_up, 120)
        assert worker.stop() == 0, worker.log_text()[-3000:]
    finally:
        dep.kill_all()

    sink = BarSink(dep.bootstrap, dep.settings.topics.normalized, pool, group="e2e-sink")
    try:
        await sink.run(lambda: False, idle_exit_s=3.0)
    finally:
        sink.close()

    trades = [t for t in emu.sent if t.kind == "TRADE"]
    start = datetime.fromtimestamp(min(t.ts_ns for t in trades) // 10**9 - 1, UTC)
    end = datetime.fromtimestamp(max(t.ts_ns for t in trades) // 10**9 + 2, UTC)
    for symbol in SYMBOLS:
        tape = pl.DataFrame(
            {
                "ts": [t.ts_ns for t in trades if t.symbol == symbol],
                "price": [t.price for t in trades if t.symbol == symbol],
                "size": [t.size for t in trades if t.symbol == symbol],
            }
        )
        expected = barlib.trade_bars(tape, "1s")
        stored = (await bars_async(pool, symbol, start, end, "1s")).with_columns(
            pl.col("window_start").dt.epoch("ns")
        )
        # The last windows stay open (no later trade moved stream time past them): all others
        # are final and stored, and each must equal the batch bar of the same window.
        assert stored.height >= expected.height - 2 > 0
        want = expected.join(stored.select("window_start"), on="window_start", how="semi")
        cols = ["window_start", "open", "high", "low", "close", "volume", "trade_count"]
        got = stored.select(cols).sort("window_start")
        assert got.to_dicts() == want.select(cols).sort("window_start").to_dicts(), symbol
