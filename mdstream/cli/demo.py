"""`mdstream demo` and `mdstream simulate`: the generated feed through a real worker, shown live.

The demo starts Kafka and PostgreSQL (project-managed), one `faust worker` and the bar store,
publishes the generated multi-provider feed in real time and prints what a downstream consumer sees
with `read_committed`: bars, quality alerts and dead letters, then the consensus table through the
worker's web view and the stored minute bars read back with `mdstream.storage.history.bars`.
The distribution side runs too: the Pulsar mirror, the Redis latest-price sink and the live page
(`mdstream serve`, its URL printed at start); at the end the demo reads the AAPL bars back from
Pulsar and looks the latest prices up in Redis. It stops everything cleanly after a bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from confluent_kafka import KafkaException

from mdstream.bus.kafka import committed_consumer, ensure_topics, publish
from mdstream.core.contracts import ALERT, DEAD_LETTER, NORMALIZED, ContractSet
from mdstream.core.simulate import FeedSpec, generate
from mdstream.settings import REPO_ROOT, Settings, deployment_env

FAUST = str(Path(sys.executable).parent / "faust")


def _fmt_ts(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ns / 1e9))


def _show(name: str, record: dict[str, Any], show_1s: set[str]) -> None:
    if name == NORMALIZED:
        sym, iv = record["instrument"]["symbol"], record["interval"]
        if iv == "1s" and sym not in show_1s:
            return
        o = record["ohlcv"]
        print(
            f"BAR   {sym:<5} {iv:>3} {_fmt_ts(record['window_start'])}  O {o['open']:>8.2f} "
            f"H {o['high']:>8.2f} L {o['low']:>8.2f} C {o['close']:>8.2f} V {o['volume']:>8.0f} "
            f"VWAP {o['vwap']:>9.3f} n={o['trade_count']:<4} via {record['sources'][0]}",
            flush=True,
        )
    elif name == ALERT:
        print(
            f"ALERT {record['severity']:<6} {record['alert_type']:<16} {record['status']:<7} "
            f"{record['instrument']:<5} {record['source']:<8} {record['description']}",
            flush=True,
        )
    elif name == DEAD_LETTER:
        print(f"DLQ   {record['stage']:<8} {record['reason']}", flush=True)


def _wait_ready(proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while "Worker]: Ready" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}); see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready after {timeout:.0f}s; see {log_path}")
        time.sleep(0.3)


def run_demo(seconds: float, show_1s: set[str]) -> int:
    from mdstream.services import ensure_up

    endpoints = ensure_up(only=["kafka", "postgres", "redis", "pulsar"])
    run_id = time.strftime("demo%Y%m%d%H%M%S")
    run_dir = REPO_ROOT / ".run" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    web_port = int(os.environ.get("MDSTREAM_WEB_PORT", "6066"))
    env = deployment_env(run_id, endpoints.kafka_bootstrap, run_dir / "worker", web_port)
    env.update(
        MDSTREAM_PULSAR_URL=endpoints.pulsar_url,
        MDSTREAM_PULSAR_ADMIN_URL=endpoints.pulsar_admin_url,
        MDSTREAM_REDIS_URL=endpoints.redis_url,
    )
    os.environ.update(env)
    settings = Settings.from_env()
    topics = settings.topics
    ensure_topics(endpoints.kafka_bootstrap, (topics.raw, *topics.outputs()), settings.partitions)
    ensure_topics(
        endpoints.kafka_bootstrap, (topics.consensus, topics.corporate_actions), settings.partitions
    )
    contracts = ContractSet.load()
    log_path = run_dir / "worker.log"
    print(f"mdstream demo: worker log {log_path}; topics {topics.raw} → {topics.outputs()}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [FAUST, "-A", "mdstream.app", "worker", "-l", "info"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    counts: collections.Counter[str] = collections.Counter()
    distribution = _start_distribution(env, run_dir)
    print(
        f"live page: http://{settings.serve_host}:{settings.serve_port}/"
        "?instruments=AAPL,MSFT,NVDA,SPY&timeframe=1s"
    )
    try:
        _wait_ready(proc, log_path, timeout=120)
        print(f"worker ready (web views on http://{settings.web_host}:{settings.web_port}/table/)")
        feed = FeedSpec(duration_s=seconds, start_ns=time.time_ns())
        stop = threading.Event()
        publisher = threading.Thread(
            target=publish,
            args=(endpoints.kafka_bootstrap, topics.raw, generate(feed), contracts),
            kwargs={"pace": 1.0, "should_stop": stop.is_set},
            daemon=True,
        )
        publisher.start()
        store = BarStoreThread(
            endpoints.kafka_bootstrap, topics.normalized, endpoints.postgres_dsn, run_id
        )
        store.start()
        consumer = committed_consumer(endpoints.kafka_bootstrap)
        consumer.subscribe(list(topics.outputs()))
        deadline = time.monotonic() + seconds + 8  # the feed, then grace + commit to drain
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaException(msg.error())
                name, record = contracts.decode(msg.value())
                counts[name] += 1
                _show(name, record, show_1s)
        finally:
            stop.set()
            consumer.close()
        _print_consensus(settings)
        store.finish()
        _print_history(endpoints.postgres_dsn, run_id, feed.start_ns)
        _print_distribution(settings)
    finally:
        for other in distribution:
            other.send_signal(signal.SIGTERM)
        for other in distribution:
            try:
                other.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(other.pid, signal.SIGKILL)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = -9
    print(
        f"\nsummary: {counts[NORMALIZED]} bars, {counts[ALERT]} alerts, "
        f"{counts[DEAD_LETTER]} dead letters; worker stopped cleanly: {code == 0}"
    )
    return 0 if counts[NORMALIZED] and code == 0 else 1


def _print_consensus(settings: Settings) -> None:
    base = f"http://{settings.web_host}:{settings.web_port}/table/consensus"
    print("\nconsensus table (faust web view):")
    for symbol in ("AAPL", "MSFT", "NVDA", "SPY"):
        try:
            with urllib.request.urlopen(f"{base}/{symbol}/", timeout=5) as resp:
                c = json.loads(resp.read())
        except OSError as exc:
            print(f"  {symbol}: not available ({exc})")
            continue
        print(
            f"  {symbol:<5} {c['price']:>9.2f}  [p25 {c['p25']:.2f}, p75 {c['p75']:.2f}] "
            f"from {c['providers']} providers"
        )


def _start_distribution(env: dict[str, str], run_dir: Path) -> list[subprocess.Popen]:
    """The mirror, the latest-price sink and the live page, as the Procfile runs them."""
    mdstream = str(Path(sys.executable).parent / "mdstream")
    procs = []
    for command in ("mirror", "sink-latest", "serve"):
        with (run_dir / f"{command}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [mdstream, command],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return procs


def _print_distribution(settings: Settings) -> None:
    """AAPL's minute bars as Pulsar has them, and the latest prices from Redis."""
    import pulsar

    from mdstream.distribution.latest import LatestStore
    from mdstream.distribution.routes import route

    time.sleep(2)  # the mirror and the sink commit what the worker committed last
    contracts = ContractSet.load()
    where = {"instrument": {"symbol": "AAPL"}, "interval": "1m", "window_start": 0, "revision": 0}
    topic = route(NORMALIZED, where).topic
    quiet = pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
    client = pulsar.Client(settings.pulsar_url, logger=quiet)
    try:
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        mine = []
        while reader.has_message_available():
            msg = reader.read_next(3000)
            if msg.properties().get("kafka_topic") == settings.topics.normalized:
                mine.append(msg)
        print(f"\nPulsar {topic}: {len(mine)} AAPL 1m bars from this run (last 3):")
        for msg in mine[-3:]:
            _, bar = contracts.decode(msg.data())
            when = _fmt_ts(msg.event_timestamp() * 1_000_000)
            offset = msg.properties()["kafka_offset"]
            print(
                f"  event time {when} key {msg.partition_key()} close"
                f" {bar['ohlcv']['close']:.2f} (Kafka offset {offset})"
            )
    finally:
        client.close()
    store = LatestStore.for_settings(settings)
    try:
        print("\nRedis latest prices (mdstream latest AAPL MSFT):")
        for symbol, kinds in store.get_many(["AAPL", "MSFT"]).items():
            for kind, value in sorted(kinds.items()):
                shown = value.get("close", value.get("price", value.get("bid")))
                print(f"  {symbol:<5} {kind:<10} {shown}")
    finally:
        store.close()


class BarStoreThread(threading.Thread):
    """`mdstream store-bars` in a thread: the worker's bars into this run's PostgreSQL schema."""

    def __init__(self, bootstrap: str, topic: str, dsn: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.dsn, self.run_id = bootstrap, topic, dsn, run_id
        self.stop = threading.Event()
        self.stored = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    async def _run(self) -> None:
        from mdstream.storage.bar_sink import BarSink
        from mdstream.storage.postgres import create_pool

        pool = await create_pool(self.dsn, schema=self.run_id)
        sink = BarSink(self.bootstrap, self.topic, pool, group=f"{self.run_id}-bar-store")
        try:
            await sink.run(self.stop.is_set)
        finally:
            sink.close()
            await pool.close()
        self.stored = sink.stats.changed

    def finish(self) -> None:
        time.sleep(2)  # the last committed bars
        self.stop.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        print(f"\nbar store: {self.stored} bars written to PostgreSQL (schema {self.run_id})")


def _print_history(dsn: str, schema: str, start_ns: int) -> None:
    from mdstream.storage import history

    start = datetime.fromtimestamp(start_ns / 1e9 - 60, UTC)
    end = datetime.now(UTC)
    columns = ("window_start", "open", "high", "low", "close", "volume", "vwap", "trade_count")
    for freq, rows in (("1m", 5), ("1s", 8)):
        frame = history.bars("AAPL", start, end, freq, dsn=dsn, schema=schema)
        print(f"AAPL {freq} bars from mdstream.storage.history.bars (last {rows} of {len(frame)}):")
        with pl.Config(tbl_rows=rows, tbl_cols=10, tbl_width_chars=120):
            print(frame.select(columns).tail(rows))


def run_simulate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    ensure_topics(
        settings.bootstrap, (settings.topics.raw, *settings.topics.outputs()), settings.partitions
    )
    feed = FeedSpec(
        duration_s=args.seconds,
        seed=args.seed,
        start_ns=time.time_ns() if args.now else FeedSpec().start_ns,
        rate_scale=args.rate_scale,
    )
    sent = publish(
        settings.bootstrap,
        settings.topics.raw,
        generate(feed),
        ContractSet.load(),
        pace=args.pace or None,
    )
    print(f"published {sent} messages to {settings.topics.raw}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="run a worker on the generated feed, print results")
    demo.add_argument("--seconds", type=float, default=60.0, help="feed length (default 60)")
    demo.add_argument(
        "--show-1s",
        default="AAPL",
        help="comma-separated symbols whose 1s bars are printed (1m bars: all)",
    )
    demo.set_defaults(func=lambda a: run_demo(a.seconds, set(a.show_1s.split(","))))

    sim = subparsers.add_parser("simulate", help="publish the generated feed to the raw topic")
    sim.add_argument("--seconds", type=float, default=60.0)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument(
        "--pace",
        type=float,
        default=1.0,
        help="feed seconds per wall second; 0 = as fast as possible",
    )
    sim.add_argument("--rate-scale", type=float, default=1.0, help="multiplies trade rates")
    sim.add_argument("--now", action="store_true", help="stamp event times from now")
    sim.set_defaults(func=run_simulate)
