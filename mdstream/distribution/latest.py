"""Latest prices in Redis: per instrument, the newest trade, quote, bar of each interval and
consensus, never overwritten by older data.

- `updates_for` (pure) turns a decoded record into (instrument, kind, order, payload) updates;
  `order` is (event time ns, revision), written as a fixed-width string so that Redis' Lua
  compares it exactly (Lua numbers are doubles: epoch nanoseconds do not fit).
- One Lua script applies a batch atomically: each update only if its order is greater than the
  stored one for that kind, and the sink's Kafka offsets in the same call. Replays, duplicates and
  out-of-order corrections therefore never move a value backwards.
- The sink keeps its progress in Redis with the data. A Redis that restarted empty has lost both,
  so the sink (which reconnects by itself) reads the topics again from the start and rebuilds
  the newest state: nothing stale can stay behind. Trades and quotes come from the raw topic (the
  pipeline publishes no tick stream); only positive finite prices are kept.

Layout: hash `{prefix}latest:{SYMBOL}` with field `<kind>` = JSON payload and `<kind>@` = order;
hash `{prefix}latest-offsets` with `topic:partition` → next offset.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from mdstream.core.contracts import CONSENSUS, NORMALIZED, RAW_BATCH, ContractSet, DecodeError

if TYPE_CHECKING:
    from mdstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    symbol: str
    kind: str  # "trade", "quote", "bar:1s", "bar:1m", ..., "consensus"
    event_ns: int
    revision: int
    payload: dict[str, Any]

    @property
    def order(self) -> str:
        return f"{self.event_ns:020d}:{self.revision:010d}"


def _finite_positive(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


def updates_for(contract: str, record: Mapping[str, Any]) -> list[Update]:
    """What one record changes in the latest-price view (empty: nothing)."""
    if contract == NORMALIZED:
        symbol = record["instrument"]["symbol"]
        o = record["ohlcv"]
        payload = {
            "interval": record["interval"], "start_ns": record["window_start"],
            "end_ns": record["window_end"], "open": o["open"], "high": o["high"],
            "low": o["low"], "close": o["close"], "volume": o["volume"], "vwap": o["vwap"],
            "trades": o["trade_count"], "revision": record["revision"],
            "sources": list(record["sources"]),
        }  # fmt: skip
        return [
            Update(symbol, f"bar:{record['interval']}", record["window_start"],
                   record["revision"], payload)
        ]  # fmt: skip
    if contract == CONSENSUS:
        payload = {
            "price": record["price"], "p25": record["p25"], "p75": record["p75"],
            "providers": record["providers"], "as_of_ns": record["as_of"],
        }  # fmt: skip
        return [Update(record["instrument"], "consensus", record["as_of"], 0, payload)]
    if contract == RAW_BATCH:
        symbol, source = record["instrument"]["symbol"], record["source"]
        best: dict[str, Update] = {}
        for tick in record["ticks"]:
            if tick["kind"] == "TRADE" and _finite_positive(tick["price"]):
                update = Update(symbol, "trade", tick["timestamp"], 0, {
                    "price": tick["price"], "volume": tick["volume"], "source": source,
                    "ts_ns": tick["timestamp"],
                })  # fmt: skip
            elif tick["kind"] == "QUOTE" and _finite_positive(tick["bid"], tick["ask"]):
                if tick["bid"] > tick["ask"]:
                    continue  # crossed: not a price anyone could deal at
                update = Update(symbol, "quote", tick["timestamp"], 0, {
                    "bid": tick["bid"], "ask": tick["ask"], "source": source,
                    "ts_ns": tick["timestamp"],
                })  # fmt: skip
            else:
                continue
            if update.kind not in best or update.order > best[update.kind].order:
                best[update.kind] = update
        return list(best.values())
    return []


# KEYS: the offsets hash, then one hash per instrument.
# ARGV: n_offsets, (field, offset) × n, then (key index, kind, order, payload) × ...
_CAS = """
local n_off = tonumber(ARGV[1])
local applied = 0
for i = 2, 1 + 2 * n_off, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = 2 + 2 * n_off, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  local kind, order = ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', key, kind .. '@')
  if (not current) or current < order then
    redis.call('HSET', key, kind .. '@', order, kind, ARGV[i + 3])
    applied = applied + 1
  end
end
return applied
"""


class LatestStore:
    """Reads and compare-and-set writes of the latest-price hashes (sync redis-py)."""

    def __init__(self, url: str, prefix: str = "md:") -> None:
        self.url, self.prefix = url, prefix
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._script = self.client.register_script(_CAS)

    @classmethod
    def for_settings(cls, settings: Settings) -> LatestStore:
        """The deployment's store: MDSTREAM_REDIS_URL, keys under `md:<app id>:`."""
        return cls(settings.redis_url, prefix=f"md:{settings.app_id}:")

    def key(self, symbol: str) -> str:
        return f"{self.prefix}latest:{symbol}"

    @property
    def offsets_key(self) -> str:
        return f"{self.prefix}latest-offsets"

    def apply(self, updates: Sequence[Update], offsets: Mapping[str, int] | None = None) -> int:
        """Apply atomically; returns how many updates were newer than what was stored.
        Within one batch only the newest update per (instrument, kind) can win, so only those
        are encoded and sent (same outcome, a fraction of the work)."""
        newest: dict[tuple[str, str], Update] = {}
        for u in updates:
            current = newest.get((u.symbol, u.kind))
            if current is None or current.order < u.order:
                newest[(u.symbol, u.kind)] = u
        updates = list(newest.values())
        keys = [self.offsets_key]
        index: dict[str, int] = {}
        argv: list[Any] = [len(offsets or {})]
        for field, offset in (offsets or {}).items():
            argv += [field, offset]
        for u in updates:
            k = self.key(u.symbol)
            if k not in index:
                keys.append(k)
                index[k] = len(keys)
            argv += [index[k], u.kind, u.order, json.dumps(u.payload, separators=(",", ":"))]
        if len(keys) == 1 and not offsets:
            return 0
        return int(self._script(keys=keys, args=argv))

    def offsets(self) -> dict[str, int]:
        raw = self.client.hgetall(self.offsets_key)
        return {k.decode(): int(v) for k, v in raw.items()}

    def get(self, symbol: str) -> dict[str, dict[str, Any]]:
        """{kind: payload} for one instrument ({} when nothing is known)."""
        raw = self.client.hgetall(self.key(symbol))
        return {k.decode(): json.loads(v) for k, v in raw.items() if not k.decode().endswith("@")}

    def get_many(self, symbols: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        symbols = list(symbols)
        pipe = self.client.pipeline(transaction=False)
        for s in symbols:
            pipe.hgetall(self.key(s))
        out = {}
        for s, raw in zip(symbols, pipe.execute(), strict=True):
            out[s] = {
                k.decode(): json.loads(v) for k, v in raw.items() if not k.decode().endswith("@")
            }
        return out

    def close(self) -> None:
        self.client.close()


class LatestSink:
    """Committed Kafka outputs (and raw ticks) → `LatestStore`; resumes from the offsets stored
    with the data, reconnects to Redis by itself. One sink per deployment (it assigns itself
    every partition of its topics)."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        store: LatestStore,
        contracts: ContractSet | None = None,
        max_batch: int = 5000,
    ) -> None:
        self.bootstrap, self.topics, self.store = bootstrap, list(topics), store
        self.contracts = contracts or ContractSet.load()
        self.max_batch = max_batch
        self.applied = 0
        self.reconnects = 0

    def _seek_to_stored(self, consumer: Consumer) -> None:
        stored = self.store.offsets()
        meta = consumer.list_topics(timeout=30).topics
        assignment = []
        for topic in self.topics:
            if topic not in meta:
                raise KafkaException(f"topic {topic} does not exist")
            for p in meta[topic].partitions:
                offset = stored.get(f"{topic}:{p}", OFFSET_BEGINNING)
                assignment.append(TopicPartition(topic, p, offset))
        consumer.assign(assignment)
        log.info("latest sink: reading from %s", {f"{t.topic}:{t.partition}": t.offset
                                                  for t in assignment})  # fmt: skip

    def _wait_for_redis(self, should_stop: Callable[[], bool]) -> None:
        delay = 0.1
        while not should_stop():
            try:
                self.store.client.ping()
                return
            except redis.RedisError:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "mdstream-latest-sink",  # never commits: offsets live in Redis
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        try:
            self._wait_for_redis(should_stop)
            self._seek_to_stored(consumer)
            wrote, last_check = False, time.monotonic()
            while not should_stop():
                batch = consumer.consume(self.max_batch, 0.05)
                if not batch:
                    # Idle: a Redis restarted empty shows no error until the next write, so
                    # look once a second for the progress it would have lost with the data.
                    if wrote and time.monotonic() - last_check > 1.0:
                        last_check = time.monotonic()
                        try:
                            lost = not self.store.client.exists(self.store.offsets_key)
                        except redis.RedisError:
                            lost = True
                        if lost:
                            log.warning("latest sink: Redis lost its data; rebuilding")
                            self.reconnects += 1
                            self._wait_for_redis(should_stop)
                            self._seek_to_stored(consumer)
                    continue
                updates: list[Update] = []
                offsets: dict[str, int] = {}
                for msg in batch:
                    if msg.error():
                        raise KafkaException(msg.error())
                    offsets[f"{msg.topic()}:{msg.partition()}"] = msg.offset() + 1
                    try:
                        name, record = self.contracts.decode(msg.value())
                    except DecodeError:
                        continue  # the pipeline dead-letters bad raw bytes; nothing to show
                    updates += updates_for(name, record)
                try:
                    self.applied += self.store.apply(updates, offsets)
                    wrote = True
                except redis.RedisError as exc:
                    log.warning("latest sink: Redis failed (%s); reconnecting", exc)
                    self.reconnects += 1
                    self._wait_for_redis(should_stop)
                    self._seek_to_stored(consumer)  # empty after a restart: from the start
        finally:
            consumer.close()
