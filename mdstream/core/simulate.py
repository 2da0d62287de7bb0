"""A generated multi-provider feed, deterministic for a seed, so demos and tests need no account.

One true trade tape per instrument (Poisson arrivals, log-normal price walk on a 1-cent grid) is
observed by several providers, each with its own coverage, latency, jitter and batching cadence.
Faults are injected on purpose: one provider falls silent for a while, a few ticks are bad
(fat-finger prices, −1 sentinels, zero sizes) and a few Kafka messages are not Avro at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mdstream.providers.fields import trade


@dataclass(frozen=True)
class InstrumentSpec:
    symbol: str
    exchange: str
    isin: str
    price: float
    trades_per_s: float


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    coverage: float  # share of the true trades it reports
    latency_ms: float
    jitter_ms: float
    batch_ms: float  # how often it flushes a batch per instrument
    outage: tuple[float, float] | None = None  # seconds into the feed: silent in [start, end)


INSTRUMENTS = (
    InstrumentSpec("AAPL", "XNAS", "US0378331005", 228.50, 40),
    InstrumentSpec("MSFT", "XNAS", "US5949181045", 415.20, 30),
    InstrumentSpec("NVDA", "XNAS", "US67066G1040", 141.90, 60),
    InstrumentSpec("AMZN", "XNAS", "US0231351067", 201.30, 25),
    InstrumentSpec("TSLA", "XNAS", "US88160R1014", 338.70, 45),
    InstrumentSpec("JPM", "XNYS", "US46625H1005", 243.10, 12),
    InstrumentSpec("SPY", "ARCX", "US78462F1030", 595.40, 50),
    InstrumentSpec("QQQ", "XNAS", "US46090E1038", 509.80, 35),
)

PROVIDERS = (
    ProviderSpec("alpaca", coverage=1.0, latency_ms=3, jitter_ms=2, batch_ms=20, outage=(30, 45)),
    ProviderSpec("polygon", coverage=0.98, latency_ms=8, jitter_ms=4, batch_ms=50),
    ProviderSpec(
        "finnhub", coverage=0.9, latency_ms=40, jitter_ms=20, batch_ms=100, outage=(15, 30)
    ),
)


@dataclass(frozen=True)
class FeedSpec:
    duration_s: float = 60.0
    start_ns: int = 1_764_000_000_000_000_000  # 2025-11-24T16:00:00Z, inside a US session
    seed: int = 7
    instruments: tuple[InstrumentSpec, ...] = INSTRUMENTS
    providers: tuple[ProviderSpec, ...] = PROVIDERS
    bad_tick_rate: float = 0.0005
    garbage_message_rate: float = 0.001
    rate_scale: float = 1.0  # multiplies every instrument's trade rate (benchmarks)


@dataclass(frozen=True)
class FeedMessage:
    """One Kafka message of the raw topic: a batch record to encode, or raw garbage bytes."""

    publish_ns: int  # feed time at which it is sent
    key: bytes
    value: dict[str, Any] | bytes
    n_ticks: int = 0


@dataclass
class _Tape:
    ts: np.ndarray
    price: np.ndarray
    size: np.ndarray = field(repr=False)


def _true_tape(rng: np.random.Generator, spec: InstrumentSpec, feed: FeedSpec) -> _Tape:
    rate = spec.trades_per_s * feed.rate_scale
    n = rng.poisson(rate * feed.duration_s)
    offsets = np.sort(rng.uniform(0, feed.duration_s * 1e9, n)).astype(np.int64)
    # ~20% annualised volatility, scaled to the gaps between trades.
    dt_years = np.diff(offsets, prepend=0) / (252 * 6.5 * 3600 * 1e9)
    log_path = np.cumsum(rng.normal(0.0, 0.2 * np.sqrt(dt_years)))
    price = np.round(spec.price * np.exp(log_path), 2)
    size = np.maximum(1, np.round(rng.lognormal(4.0, 1.2, n))).astype(np.float64)
    return _Tape(feed.start_ns + offsets, price, size)


def _corrupt(rng: np.random.Generator, price: np.ndarray, size: np.ndarray, rate: float) -> None:
    bad = np.flatnonzero(rng.random(len(price)) < rate)
    for i in bad:
        kind = rng.integers(3)
        if kind == 0:
            price[i] = round(price[i] * rng.choice([0.8, 1.25, 10.0]), 2)  # fat finger
        elif kind == 1:
            price[i] = -1.0  # "no data" sentinel
        else:
            size[i] = 0.0


def generate(feed: FeedSpec) -> Iterator[FeedMessage]:
    """All messages of the feed, in publishing order."""
    rng = np.random.default_rng(feed.seed)
    messages: list[FeedMessage] = []
    for inst in feed.instruments:
        tape = _true_tape(rng, inst, feed)
        for prov in feed.providers:
            seen = rng.random(len(tape.ts)) < prov.coverage
            if prov.outage is not None:
                lo, hi = (feed.start_ns + int(s * 1e9) for s in prov.outage)
                seen &= (tape.ts < lo) | (tape.ts >= hi)
            ts = tape.ts[seen]
            price, size = tape.price[seen].copy(), tape.size[seen].copy()
            _corrupt(rng, price, size, feed.bad_tick_rate)
            latency = np.maximum(0.2, rng.normal(prov.latency_ms, prov.jitter_ms, len(ts)))
            provider_ts = ts + (latency * 1e6).astype(np.int64)
            batch_ns = int(prov.batch_ms * 1e6)
            flush = (provider_ts // batch_ns + 1) * batch_ns
            order = np.argsort(flush, kind="stable")
            ts, price, size, provider_ts, flush = (
                a[order] for a in (ts, price, size, provider_ts, flush)
            )
            cuts = np.flatnonzero(np.diff(flush)) + 1
            for idx in np.split(np.arange(len(ts)), cuts):
                if len(idx) == 0:
                    continue
                published = int(flush[idx[0]])
                ticks = [
                    trade(
                        int(ts[i]),
                        float(price[i]),
                        float(size[i]),
                        provider_ts_ns=int(provider_ts[i]),
                    )
                    for i in idx
                ]
                batch = {
                    "batchId": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
                    "timestamp": published,
                    "source": prov.name,
                    "instrument": {
                        "symbol": inst.symbol,
                        "exchange": inst.exchange,
                        "isin": inst.isin,
                    },
                    "ticks": ticks,
                }
                messages.append(FeedMessage(published, inst.symbol.encode(), batch, len(ticks)))
    n_garbage = rng.binomial(len(messages), feed.garbage_message_rate)
    for _ in range(n_garbage):
        at = int(feed.start_ns + rng.uniform(0, feed.duration_s * 1e9))
        inst = feed.instruments[rng.integers(len(feed.instruments))]
        messages.append(FeedMessage(at, inst.symbol.encode(), b"\x00\x00garbage" + rng.bytes(12)))
    messages.sort(key=lambda m: m.publish_ns)
    return iter(messages)
