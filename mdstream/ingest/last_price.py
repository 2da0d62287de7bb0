"""Last prices per instrument in Redis: what is served, flagged stale, when every provider fails.

`LastPriceCache.update` keeps the newest trade/quote per instrument in memory; `flush` writes the
changed ones in one pipeline (a Redis round trip per flush, not per tick). `CachingSink` wraps
the raw-batch sink so every tick that goes to Kafka also refreshes the cache.

Redis layout: hash ``{prefix}last:{symbol}`` with price, bid, ask, provider, ts_ns. A newer
timestamp wins, also against a value written by another process (checked in a Lua script).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from mdstream.ingest.protocols import TickSink
from mdstream.providers.base import FrameError, ProviderTick

# KEYS[1] hash; ARGV ts_ns, price, bid, ask, provider ("" = none). Older updates are ignored.
_SET_IF_NEWER = """
local old = tonumber(redis.call('HGET', KEYS[1], 'ts_ns') or '-1')
if tonumber(ARGV[1]) < old then return 0 end
redis.call('HSET', KEYS[1], 'ts_ns', ARGV[1], 'price', ARGV[2], 'bid', ARGV[3], 'ask', ARGV[4],
           'provider', ARGV[5])
return 1
"""


@dataclass(frozen=True)
class CachedPrice:
    symbol: str
    price: float | None
    bid: float | None
    ask: float | None
    provider: str
    ts_ns: int
    age_ns: int
    stale: bool


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _opt(raw: bytes | None) -> float | None:
    return None if not raw else float(raw)


class LastPriceCache:
    def __init__(self, redis: Redis, *, prefix: str = "mdstream:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(_SET_IF_NEWER)
        self._pending: dict[str, dict[str, Any]] = {}

    def key(self, symbol: str) -> str:
        return f"{self.prefix}last:{symbol}"

    def update(self, tick: ProviderTick) -> None:
        t = tick.tick
        if t.get("price") is None and t.get("bid") is None and t.get("ask") is None:
            return
        old = self._pending.get(tick.symbol)
        if old is None or t["timestamp"] >= old["ts_ns"]:
            prev_price = old["price"] if old else None
            self._pending[tick.symbol] = {
                "ts_ns": t["timestamp"],
                # A quote keeps the last trade price; a trade keeps the last quote.
                "price": t.get("price") if t.get("price") is not None else prev_price,
                "bid": t.get("bid") if t.get("bid") is not None else (old or {}).get("bid"),
                "ask": t.get("ask") if t.get("ask") is not None else (old or {}).get("ask"),
                "provider": tick.provider,
            }

    async def flush(self) -> int:
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for symbol, v in pending.items():
                await self._script(
                    keys=[self.key(symbol)],
                    args=[
                        v["ts_ns"],
                        _num(v["price"]),
                        _num(v["bid"]),
                        _num(v["ask"]),
                        v["provider"],
                    ],
                    client=pipe,
                )
            await pipe.execute()
        return len(pending)

    async def run(self, interval_s: float = 0.1) -> None:
        """Flush every `interval_s` until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def get(
        self,
        symbol: str,
        *,
        stale_after_ns: int,
        force_stale: bool = False,
        now_ns: int | None = None,
    ) -> CachedPrice | None:
        raw = await self.redis.hgetall(self.key(symbol))
        if not raw:
            return None
        ts = int(raw[b"ts_ns"])
        age = (time.time_ns() if now_ns is None else now_ns) - ts
        return CachedPrice(
            symbol,
            _opt(raw.get(b"price")),
            _opt(raw.get(b"bid")),
            _opt(raw.get(b"ask")),
            raw.get(b"provider", b"").decode(),
            ts,
            age,
            force_stale or age > stale_after_ns,
        )


class CachingSink:
    """A `TickSink` that refreshes the last-price cache on the way to the real sink."""

    def __init__(self, inner: TickSink, cache: LastPriceCache) -> None:
        self.inner = inner
        self.cache = cache

    async def submit(self, tick: ProviderTick) -> None:
        self.cache.update(tick)
        await self.inner.submit(tick)

    async def dead_letter(self, error: FrameError) -> None:
        await self.inner.dead_letter(error)
