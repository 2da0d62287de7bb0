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
import time
from typing import Any

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
from mdstream.ops import metrics
from mdstream.ops.backpressure import Target, ThrottleController
from mdstream.ops.health import HealthReport, assess
from mdstream.ops.lag import LagMonitor
from mdstream.ops.server import OpsServer
from mdstream.ops.throttle import ThrottleLimits
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
    p.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port"
    )
    p.add_argument(
        "--throttle-lag",
        type=int,
        default=int(os.environ.get("MDSTREAM_THROTTLE_LAG", "2000")),
        help="workers' lag (raw messages) that engages throttling; ×5 pauses non-priority "
        "providers; 0: never throttle (default: MDSTREAM_THROTTLE_LAG or 2000)",
    )
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
    monitor = LagMonitor(settings.bootstrap, settings.app_id, [topics.raw])
    throttle = None
    if args.throttle_lag > 0:
        limits = ThrottleLimits(
            lag_engage=args.throttle_lag,
            lag_severe=5 * args.throttle_lag,
            lag_release=args.throttle_lag // 4,
        )
        priority = args.provider == next(iter(settings.pipeline.provider_priority), args.provider)
        throttle = ThrottleController(monitor, [Target(args.provider, priority, batcher)], limits)
    server = _ops_server(args, feed, monitor)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(feed.stop()))
    task = asyncio.create_task(feed.run())
    controller = asyncio.create_task(throttle.run()) if throttle else None
    try:
        if args.seconds is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), args.seconds)
            await feed.stop()
        await task
    finally:
        if controller is not None:
            controller.cancel()
        await batcher.close()
        if redis is not None:
            await redis.aclose()
        if server is not None:
            server.close()
        monitor.close()
    return feed, batcher


def _ops_server(
    args: argparse.Namespace, feed: WebSocketFeed, monitor: LagMonitor
) -> OpsServer | None:
    """/metrics and the probes: live while the feed task runs, ready once connected and the
    broker answers (the throttle's lag probe; without throttling, the feed alone)."""
    if not args.metrics_port:
        return None
    name = f"{args.provider}:{args.metrics_port}"
    metrics.UP.labels("ingest", name).set(1)

    def report() -> HealthReport:
        connected = bool(feed.health().connected)
        ok_at = monitor.last_ok_at if args.throttle_lag > 0 else time.monotonic()
        health = assess(
            now=time.monotonic(),
            broker_ok_at=ok_at,
            broker_timeout_s=10.0,
            assigned=True,
            stalled=[],
            extra={"provider": connected},
        )
        metrics.READY.labels("ingest", name).set(1 if health.ready else 0)
        return health

    return OpsServer(args.metrics_port, health=report)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
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
