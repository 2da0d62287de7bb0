"""Latest prices in Redis: the ordering rule (pure), the compare-and-set on the real Redis, and
the sink from Kafka through replays and a Redis restart."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from mdstream.bus.kafka import ensure_topics
from mdstream.core.contracts import CONSENSUS, NORMALIZED, RAW_BATCH, ContractSet
from mdstream.distribution.latest import LatestSink, LatestStore, Update, updates_for
from mdstream.services import Endpoints, ensure_up
from mdstream.services.config import Settings as ServiceSettings
from mdstream.services.redis import RedisService
from mdstream.settings import Topics
from tests.distribution_support import (
    MDSTREAM,
    T0,
    TransactionalFeed,
    bar,
    consensus,
    encode_all,
    stack_env,
    wait_for,
)
from tests.test_contracts import RECORDS

CS = ContractSet.load()


def test_updates_carry_event_time_and_revision_in_a_comparable_order() -> None:
    [b] = updates_for(NORMALIZED, bar("AAPL", T0, 101.0, revision=2))
    assert (b.symbol, b.kind, b.event_ns, b.revision) == ("AAPL", "bar:1s", T0, 2)
    assert b.payload["close"] == 101.0
    later = Update("AAPL", "bar:1s", T0 + 1, 0, {})
    correction = Update("AAPL", "bar:1s", T0, 3, {})
    assert b.order < correction.order < later.order  # string order = (time, revision) order
    [c] = updates_for(CONSENSUS, consensus("MSFT", 415.0, T0))
    assert (c.kind, c.event_ns, c.payload["price"]) == ("consensus", T0, 415.0)


def test_raw_ticks_give_the_newest_sane_trade_and_quote() -> None:
    batch = json.loads(json.dumps(RECORDS[RAW_BATCH]))
    tick = batch["ticks"][0]
    trade = {**tick, "kind": "TRADE", "bid": None, "ask": None, "volume": 5.0}
    quote = {**tick, "kind": "QUOTE", "price": None, "volume": None, "bid": 10.0, "ask": 10.02}
    batch["ticks"] = [
        {**trade, "timestamp": T0, "price": 10.0},
        {**trade, "timestamp": T0 + 2, "price": -1.0},  # sentinel: ignored
        {**trade, "timestamp": T0 + 1, "price": 10.01},
        {**quote, "timestamp": T0 + 5, "bid": 10.05, "ask": 10.0},  # crossed: ignored
        {**quote, "timestamp": T0 + 3},
    ]
    got = {u.kind: u for u in updates_for(RAW_BATCH, batch)}
    assert got["trade"].payload["price"] == 10.01 and got["trade"].event_ns == T0 + 1
    assert got["quote"].payload["bid"] == 10.0 and got["quote"].event_ns == T0 + 3


@pytest.fixture(scope="module")
def stack() -> Endpoints:
    return ensure_up(only=["kafka", "redis"])


@pytest.mark.services
def test_compare_and_set_never_moves_a_value_backwards(stack: Endpoints) -> None:
    store = LatestStore(stack.redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    try:
        new = updates_for(NORMALIZED, bar("AAPL", T0 + 10**9, 102.0))
        old = updates_for(NORMALIZED, bar("AAPL", T0, 101.0))
        assert store.apply(new) == 1
        assert store.apply(old) == 0  # a replay of older data
        assert store.apply(new) == 0  # a duplicate
        assert store.get("AAPL")["bar:1s"]["close"] == 102.0
        fixed = updates_for(NORMALIZED, bar("AAPL", T0 + 10**9, 102.5, revision=1))
        assert store.apply(fixed) == 1  # a correction of the same window wins
        assert store.get("AAPL")["bar:1s"]["close"] == 102.5
        assert store.get("NOPE") == {}
    finally:
        store.close()


@pytest.mark.services
@pytest.mark.timeout(240)
def test_sink_keeps_the_newest_through_replays_and_a_redis_restart(
    stack: Endpoints, tmp_path: Path
) -> None:
    app_id = f"l{uuid.uuid4().hex[:10]}"
    topics = Topics.with_prefix(f"{app_id}.")
    sources = (topics.normalized, topics.consensus, topics.raw)
    ensure_topics(stack.kafka_bootstrap, sources, 2)
    symbols = ["AAPL", "MSFT", "SPY"]
    pairs = []
    for w in range(200):
        for i, s in enumerate(symbols):
            ts = T0 + w * 10**9
            pairs.append((topics.normalized, NORMALIZED, bar(s, ts, 100.0 + i + w / 100)))
            if w % 10 == 0:
                pairs.append((topics.consensus, CONSENSUS, consensus(s, 100.0 + i + w / 100, ts)))
    # A late correction of the last window, then a replay of old windows (e.g. a reprocessing).
    last = T0 + 199 * 10**9
    pairs.append((topics.normalized, NORMALIZED, bar("AAPL", last, 555.0, revision=1)))
    pairs += [
        (topics.normalized, NORMALIZED, bar(s, T0 + w * 10**9, 1.0))
        for w in range(50)
        for s in symbols
    ]
    feed = TransactionalFeed(
        stack.kafka_bootstrap, encode_all(CS, pairs), rate=5000, txn_id=f"{app_id}-feed"
    )
    feed.start()
    feed.join(60)
    assert feed.error is None

    store = LatestStore(stack.redis_url, prefix=f"md:{app_id}:")
    sink = LatestSink(stack.kafka_bootstrap, sources, store, CS)
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop.is_set,), daemon=True)
    thread.start()

    def newest() -> bool:
        try:
            got = store.get_many(symbols)
        except Exception:  # Redis restarting
            return False
        return (
            got["AAPL"].get("bar:1s", {}).get("close") == 555.0
            and got["MSFT"].get("bar:1s", {}).get("start_ns") == last
            and got["SPY"].get("consensus", {}).get("as_of_ns") == T0 + 190 * 10**9
        )

    try:
        wait_for(newest, 60, "the sink did not reach the newest values")
        RedisService(ServiceSettings.from_env()).stop()  # no persistence: it comes back empty
        ensure_up(only=["redis"])
        wait_for(newest, 60, "after the Redis restart the sink did not rebuild the newest")
        assert sink.reconnects >= 1
        assert thread.is_alive()
        done = subprocess.run(
            [MDSTREAM, "latest", "AAPL", "MSFT"],
            env=stack_env(stack, app_id),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["AAPL"]["bar:1s"]["close"] == 555.0
        assert shown["AAPL"]["bar:1s"]["revision"] == 1
        assert shown["MSFT"]["bar:1s"]["start_ns"] == last
    finally:
        stop.set()
        thread.join(30)
        store.close()
