"""`mdstream ingest`: one provider's live feed into the raw topic, until interrupted.

Credentials come from the environment (`MDSTREAM_FINNHUB_API_KEY`, `MDSTREAM_ALPACA_API_KEY` +
`MDSTREAM_ALPACA_API_SECRET`, `MDSTREAM_POLYGON_API_KEY`) or from files named by the same
variables with `_FILE` appended. With `MDSTREAM_REDIS_URL` (or `--redis-url`) set, connections
go through the provider's circuit breaker in Redis, which raises SOURCE_UNAVAILABLE when it opens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from prometheus_client import start_http_server
from redis.asyncio import Redis

from mdstream.bus.kafka import KafkaAlertPublisher, ensure_topics
from mdstream.core.contracts import ContractSet
from mdstream.ingest.alpaca import AlpacaFeed
from mdstream.ingest.batcher import BatchPolicy, RawBatcher
from mdstream.ingest.breaker import RedisBreaker
from mdstream.ingest.connection import FatalFeedError, FeedProtocol, WebSocketFeed
from mdstream.ingest.credentials import MissingCredential
from mdstream.ingest.finnhub import FinnhubFeed
from mdstream.ingest.polygon import PolygonFeed
from mdstream.settings import Settings

FEEDS = {"finnhub": FinnhubFeed, "alpaca": AlpacaFeed, "polygon": PolygonFeed}
log = logging.getLogger("mdstream.ingest")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ingest", help="stream a provider's live feed into the raw topic")
    p.add_argument("--provider", required=True, choices=sorted(FEEDS))
    p.add_argument("--symbols", required=True, help="comma-separated, e.g. AAPL,MSFT")
    p.add_argument("--url", help="websocket URL (default: the provider's; an emulator's in tests)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: run until ^C)")
    p.add_argument("--max-ticks", type=int, default=500, help="ticks per raw batch at most")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="batch delay bound")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("MDSTREAM_REDIS_URL"),
        help="circuit breaker state in this Redis (default: MDSTREAM_REDIS_URL; none: no breaker)",
    )
    p.set_defaults(func=run)


def build_protocol(provider: str, url: str | None) -> FeedProtocol:
    cls = FEEDS[provider]
    if url is None:
        return cls.from_env()
    url_field = "base_url" if cls is FinnhubFeed else "url_"
    return cls.from_env(**{url_field: url})


async def ingest(args: argparse.Namespace, settings: Settings) -> tuple[WebSocketFeed, RawBatcher]:
    protocol = build_protocol(args.provider, args.url)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    topics = settings.topics
    ensure_topics(
        settings.bootstrap, [topics.raw, topics.dead_letter, topics.alerts], settings.partitions
    )
    batcher = RawBatcher(
        settings.bootstrap,
        topics.raw,
        topics.dead_letter,
        ContractSet.load(),
        BatchPolicy(args.max_ticks, args.max_delay_ms / 1000),
    )
    breaker, redis = None, None
    if args.redis_url:
        redis = Redis.from_url(args.redis_url)
        alerts = KafkaAlertPublisher(settings.bootstrap, topics.alerts)
        # One breaker per provider per deployment: every ingest process of it shares the state.
        breaker = RedisBreaker(
            redis, args.provider, publish_alert=alerts, prefix=f"{settings.app_id}:"
        )
    feed = WebSocketFeed(protocol, batcher, breaker=breaker)
    await feed.subscribe(symbols)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(feed.stop()))
    task = asyncio.create_task(feed.run())
    try:
        if args.seconds is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), args.seconds)
            await feed.stop()
        await task
    finally:
        await batcher.close()
        if redis is not None:
            await redis.aclose()
    return feed, batcher


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="127.0.0.1")
    try:
        feed, batcher = asyncio.run(ingest(args, Settings.from_env()))
    except (MissingCredential, FatalFeedError) as exc:
        print(f"mdstream ingest: {exc}", file=sys.stderr)
        return 2
    h = feed.health()
    print(
        f"{args.provider}: {h.messages} frames, {h.errors} dead-lettered, "
        f"{h.reconnects} reconnects, {batcher.batches} batches published"
    )
    return 0
