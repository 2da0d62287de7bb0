"""Ingestion benchmark: each streaming adapter against its emulator on loopback, into Kafka.

    python -m benchmarks.ingest [--ticks N] [--rate R] [--seconds S] [--providers a,b,c]

The emulator runs in a child process (its own core), the adapter + RawBatcher in this one, and
Kafka is the project's (`mdstream.services.ensure_up`; set MDSTREAM_RUN_DIR/MDSTREAM_KAFKA_PORT).

1. Throughput: the emulator sends N ticks as fast as it can (100 per frame); the clock runs from
   the first tick's provider timestamp to Kafka's acknowledgement of the last.
2. Latency: the emulator paces R ticks/s for S seconds; for every tick, provider timestamp →
   Kafka acknowledgement of its batch (p50/p99). Finnhub and Polygon stamp in whole
   milliseconds, which adds ~0.5 ms on average to their figures.

A script that prints numbers, not a test: the machine is shared, figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import threading
import time
import uuid
from typing import Any

import numpy as np

from emulators.alpaca import AlpacaEmulator
from emulators.core import Emulator
from emulators.finnhub import FinnhubEmulator
from emulators.polygon import PolygonEmulator
from mdstream.bus.kafka import ensure_topics
from mdstream.core.contracts import ContractSet
from mdstream.ingest.alpaca import AlpacaFeed
from mdstream.ingest.batcher import BatchPolicy, RawBatcher
from mdstream.ingest.connection import FeedProtocol, WebSocketFeed
from mdstream.ingest.finnhub import FinnhubFeed
from mdstream.ingest.polygon import PolygonFeed
from mdstream.services import ensure_up
from mdstream.settings import Topics

KEY = "bench-key"
SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "SPY", "QQQ", "JPM"]
EMULATORS: dict[str, type[Emulator]] = {
    "finnhub": FinnhubEmulator,
    "alpaca": AlpacaEmulator,
    "polygon": PolygonEmulator,
}


def protocol(provider: str, emu_url: str) -> FeedProtocol:
    if provider == "finnhub":
        return FinnhubFeed(KEY, emu_url)
    if provider == "alpaca":
        return AlpacaFeed(KEY, "test-secret", emu_url)
    return PolygonFeed(KEY, emu_url)


def _serve(provider: str, options: dict[str, Any], ready: Any, stop: Any) -> None:
    async def main() -> None:
        emu = EMULATORS[provider](api_key=KEY, **options)
        await emu.start()
        ready.put(f"{emu.ws_url}")
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await emu.stop()

    asyncio.run(main())


async def measure(
    provider: str, bootstrap: str, budget: int, options: dict[str, Any], policy: BatchPolicy
) -> dict:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve, args=(provider, {"budget": budget, **options}, ready, stop))
    child.start()
    url = ready.get(timeout=30)
    topics = Topics.with_prefix(f"bench-ingest-{uuid.uuid4().hex[:8]}.")
    ensure_topics(bootstrap, [topics.raw, topics.dead_letter], partitions=4)
    lock = threading.Lock()
    latencies: list[np.ndarray] = []
    acked = {"ticks": 0, "first_ts": None, "last_ack": 0}

    def delivered(_p: str, _s: str, stamps: list[int], ack_ns: int) -> None:
        arr = np.asarray(stamps, dtype=np.int64)
        with lock:
            latencies.append(ack_ns - arr)
            acked["ticks"] += len(stamps)
            first = int(arr.min())
            acked["first_ts"] = min(acked["first_ts"] or first, first)
            acked["last_ack"] = max(acked["last_ack"], ack_ns)

    batcher = RawBatcher(
        bootstrap, topics.raw, topics.dead_letter, ContractSet.load(), policy, delivered
    )
    feed = WebSocketFeed(protocol(provider, url), batcher)
    await feed.subscribe(SYMBOLS)
    task = asyncio.create_task(feed.run())
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            with lock:
                if acked["ticks"] >= budget:
                    break
    finally:
        await feed.stop()
        await task
        await batcher.close()
        stop.set()
        child.join(10)
    lat = np.concatenate(latencies) / 1e6 if latencies else np.array([np.nan])
    span_s = (acked["last_ack"] - (acked["first_ts"] or 0)) / 1e9
    return {
        "ticks": acked["ticks"],
        "rate": acked["ticks"] / span_s if span_s > 0 else float("nan"),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "batches": batcher.batches,
    }


async def main_async(args: argparse.Namespace) -> None:
    bootstrap = ensure_up(only=["kafka"]).kafka_bootstrap
    policy = BatchPolicy(max_ticks=500, max_delay_s=args.max_delay_ms / 1000)
    print(
        f"{'adapter':<9} {'phase':<10} {'ticks':>7} {'ticks/s':>9} {'batches':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for provider in args.providers.split(","):
        phases = {
            "throughput": (args.ticks, {"frame_interval_s": 0, "ticks_per_frame": 100}),
            "latency": (
                int(args.rate * args.seconds),
                {"frame_interval_s": 0.005, "ticks_per_frame": max(1, round(args.rate * 0.005))},
            ),
        }
        for phase, (budget, options) in phases.items():
            r = await measure(provider, bootstrap, budget, options, policy)
            print(
                f"{provider:<9} {phase:<10} {r['ticks']:>7} {r['rate']:>9.0f} "
                f"{r['batches']:>8} {r['p50']:>8.2f} {r['p99']:>8.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=50_000, help="throughput phase budget")
    parser.add_argument("--rate", type=float, default=2_000, help="latency phase ticks/s")
    parser.add_argument("--seconds", type=float, default=5, help="latency phase duration")
    parser.add_argument("--providers", default="finnhub,alpaca,polygon")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="batch delay bound")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
