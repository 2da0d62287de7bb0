"""Distribution figures (a script, not a test): the Pulsar mirror, Redis latest prices, the
WebSocket fan-out. Prints a table; the machine is shared, so treat the numbers as rough.

    .venv/bin/python -m benchmarks.distribution [--only mirror,redis,ws] [--seconds 10]

It starts what it needs (`ensure_up`: Kafka, Pulsar, Redis), on the ports of MDSTREAM_* .

- mirror: bars of 50 instruments written to Kafka in transactions (as the EOS worker does) at a
  target rate; a `mdstream mirror` process forwards them; a Pulsar consumer receives them.
  Latency = Pulsar receive − the Kafka commit of the record's transaction.
- redis: `LatestStore.apply` batches of 1,000 bar updates (writes/s), then single `get` reads.
- ws: `mdstream serve` and 200 clients × 50 instruments; bars written to Kafka at a rate;
  latency = client receive − Kafka commit; delivered = frames/s over all clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from mdstream.bus.kafka import ensure_topics
from mdstream.core.contracts import NORMALIZED, ContractSet
from mdstream.distribution.latest import LatestStore, updates_for
from mdstream.distribution.routes import route
from mdstream.services import ensure_up
from mdstream.settings import Topics
from tests.distribution_support import (
    T0,
    Item,
    Process,
    TransactionalFeed,
    bar,
    group_lag,
    stack_env,
    wait_for,
)
from tests.workers import free_port

CS = ContractSet.load()
# Fresh instrument names per run: Pulsar topics are per instrument and outlive a run.
SYMBOLS = [f"B{uuid.uuid4().hex[:4].upper()}{i:02d}" for i in range(50)]


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def bar_items(topic: str, n: int, tag: str = "") -> tuple[list[Item], dict[bytes, str]]:
    items, ids = [], {}
    symbols = [f"{s}{tag}" for s in SYMBOLS]
    for k in range(n):
        symbol = symbols[k % len(symbols)]
        record = bar(symbol, T0 + (k // len(SYMBOLS)) * 10**9, 100.0 + (k % 997) / 100)
        value = CS.encode(NORMALIZED, record)
        items.append(Item(topic, symbol, value))
        ids[value] = record["eventId"]
    return items, ids


def bench_mirror(rate: float, seconds: float) -> dict[str, float]:
    import pulsar

    stack = ensure_up(only=["kafka", "pulsar"])
    app_id = f"bm{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(f"{app_id}.")
    ensure_topics(stack.kafka_bootstrap, topics.mirrored(), 4)
    items, _ = bar_items(topics.normalized, int(rate * seconds), tag=f"R{int(rate)}")
    pulsar_topics = sorted({route(*CS.decode(i.value)).topic for i in items})
    client = pulsar.Client(stack.pulsar_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    received: dict[bytes, float] = {}
    done = threading.Event()

    def on_message(consumer, msg) -> None:
        received[msg.data()] = time.time()
        consumer.acknowledge(msg)
        if len(received) >= len(items):
            done.set()

    consumer = client.subscribe(pulsar_topics, f"bench-{app_id}", message_listener=on_message,
                                initial_position=pulsar.InitialPosition.Earliest)  # fmt: skip
    log = Path(tempfile.mkdtemp()) / "mirror.log"
    mirror = Process(["mirror"], stack_env(stack, app_id), log)
    mirror.start()
    wait_for(lambda: "mirror: assigned" in log.read_text(), 60, "mirror not assigned")
    feed = TransactionalFeed(stack.kafka_bootstrap, items, rate=rate, size=50,
                             txn_id=f"{app_id}-feed")  # fmt: skip
    started = time.time()
    feed.start()
    feed.join()
    done.wait(300)
    wall = max(received.values()) - started if received else float("nan")
    lat = [(received[v] - feed.commit_times[v]) * 1000 for v in received if v in feed.commit_times]
    lag = group_lag(stack.kafka_bootstrap, f"{app_id}-pulsar-mirror", topics.mirrored())
    mirror.stop()
    consumer.close()
    client.close()
    return {
        "target msgs/s": rate,
        "mirrored msgs/s": len(received) / wall,
        "commit→Pulsar p50 ms": pct(lat, 0.5),
        "commit→Pulsar p99 ms": pct(lat, 0.99),
        "received": len(received),
        "sent": len(items),
        "lag at end": lag,
    }


def bench_redis(n_writes: int = 200_000, n_reads: int = 20_000) -> dict[str, float]:
    stack = ensure_up(only=["redis"])
    store = LatestStore(stack.redis_url, prefix=f"bench{uuid.uuid4().hex[:6]}:")
    updates = [
        u
        for k in range(n_writes)
        for u in updates_for(
            NORMALIZED, bar(SYMBOLS[k % 50], T0 + (k // 50) * 10**9, 100.0 + k % 97)
        )
    ]
    t = time.perf_counter()
    for at in range(0, len(updates), 1000):
        store.apply(updates[at : at + 1000])
    writes = len(updates) / (time.perf_counter() - t)
    # Every update a different key: no two in a batch about the same thing.
    distinct = [replace(u, symbol=f"D{k}") for k, u in enumerate(updates[:50_000])]
    t = time.perf_counter()
    for at in range(0, len(distinct), 1000):
        store.apply(distinct[at : at + 1000])
    writes_distinct = len(distinct) / (time.perf_counter() - t)
    lat = []
    for k in range(n_reads):
        t = time.perf_counter()
        store.get(SYMBOLS[k % 50])
        lat.append((time.perf_counter() - t) * 1000)
    store.client.delete(*[store.key(s) for s in SYMBOLS])
    store.client.delete(*[store.key(u.symbol) for u in distinct])
    store.close()
    return {
        "updates/s (50 instruments, batches of 1,000)": writes,
        "updates/s (all keys distinct)": writes_distinct,
        "read p50 ms": statistics.median(lat),
        "read p99 ms": pct(lat, 0.99),
    }


async def _ws_clients(url: str, n: int, expect: int, received: list[list]) -> None:
    import aiohttp

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        ws = await session.ws_connect(url, max_msg_size=0)
        await ws.send_str(json.dumps({"op": "subscribe", "instruments": SYMBOLS,
                                      "timeframes": ["1s"], "channels": ["bars"]}))  # fmt: skip
        mine = received[i]
        async for msg in ws:
            frame = json.loads(msg.data)
            if frame["type"] == "bar":
                mine.append((frame["id"], time.time()))
                if len(mine) >= expect:
                    break
        await ws.close()

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(one(i, session) for i in range(n)))


def bench_ws(rate: float, seconds: float, n_clients: int = 200) -> dict[str, float]:
    stack = ensure_up(only=["kafka"])
    app_id = f"bw{uuid.uuid4().hex[:8]}"
    topics = Topics.with_prefix(f"{app_id}.")
    ensure_topics(stack.kafka_bootstrap, (topics.normalized, topics.consensus, topics.alerts), 4)
    items, ids = bar_items(topics.normalized, int(rate * seconds))
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "serve.log"
    env = stack_env(stack, app_id, MDSTREAM_SERVE_PORT=str(port), MDSTREAM_INSTRUMENTS="none")
    server = Process(["serve"], env, log)
    server.start()
    wait_for(lambda: "serving the live page" in log.read_text(), 60, "serve not up")
    received: list[list] = [[] for _ in range(n_clients)]
    url = f"http://127.0.0.1:{port}/ws"
    clients = threading.Thread(
        target=lambda: asyncio.run(_ws_clients(url, n_clients, len(items), received)), daemon=True
    )
    clients.start()
    time.sleep(3)  # all connected and subscribed
    feed = TransactionalFeed(stack.kafka_bootstrap, items, rate=rate, size=10,
                             txn_id=f"{app_id}-feed")  # fmt: skip
    started = time.time()
    feed.start()
    feed.join()
    clients.join(120)
    server.stop()
    commit = {ids[v]: t for v, t in feed.commit_times.items()}
    lat = [(t - commit[i]) * 1000 for mine in received for i, t in mine if i in commit]
    total = sum(len(m) for m in received)
    last = max((t for mine in received for _, t in mine), default=started)
    return {
        "clients": n_clients,
        "bars/s into Kafka": rate,
        "frames delivered/s": total / (last - started),
        "commit→client p50 ms": pct(lat, 0.5),
        "commit→client p99 ms": pct(lat, 0.99),
        "frames delivered": total,
        "frames expected": n_clients * len(items),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="mirror,redis,ws")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--mirror-rates", default="10000,1000")
    parser.add_argument("--ws-rates", default="50,10", help="bars/s into Kafka")
    args = parser.parse_args()
    only = set(args.only.split(","))
    rows: list[tuple[str, dict]] = []
    if "redis" in only:
        say("redis …")
        rows.append(("redis latest", bench_redis()))
    if "mirror" in only:
        for rate in (float(r) for r in args.mirror_rates.split(",")):
            say(f"mirror at {rate:.0f} msgs/s …")
            rows.append((f"pulsar mirror @{rate:.0f}/s", bench_mirror(rate, args.seconds)))
    if "ws" in only:
        for rate in (float(r) for r in args.ws_rates.split(",")):
            say(f"websocket at {rate:.0f} bars/s …")
            rows.append((f"websocket @{rate:.0f} bars/s", bench_ws(rate, args.seconds)))
    for name, figures in rows:
        print(f"\n{name}")
        for k, v in figures.items():
            print(f"  {k:<44} {v:,.2f}" if isinstance(v, float) else f"  {k:<44} {v:,}")


if __name__ == "__main__":
    main()
