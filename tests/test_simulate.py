"""The generated feed: deterministic, well-formed batches, outages and faults as configured."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter, defaultdict
from itertools import pairwise
from statistics import mean
from typing import Any

import pytest

from mdstream.core.simulate import INSTRUMENTS, PROVIDERS, FeedMessage, FeedSpec, generate

S = 1_000_000_000
SMALL = FeedSpec(duration_s=5, instruments=INSTRUMENTS[:3], garbage_message_rate=0.01)
PROVIDER = {p.name: p for p in PROVIDERS}
SYMBOLS = {i.symbol for i in INSTRUMENTS}


def batches(messages: list[FeedMessage]) -> list[dict[str, Any]]:
    """The batch records of the feed (garbage messages left out)."""
    return [m.value for m in messages if isinstance(m.value, dict)]


@pytest.fixture(scope="module")
def clean() -> list[FeedMessage]:
    """50 s of two instruments, default providers (alpaca out 30–45 s, finnhub 15–30 s)."""
    feed = FeedSpec(
        duration_s=50,
        instruments=INSTRUMENTS[:2],
        bad_tick_rate=0,
        garbage_message_rate=0,
    )
    return list(generate(feed))


def test_same_seed_gives_identical_messages() -> None:
    assert list(generate(SMALL)) == list(generate(SMALL))


def test_another_seed_gives_another_feed() -> None:
    a = list(generate(SMALL))
    b = list(generate(dataclasses.replace(SMALL, seed=SMALL.seed + 1)))
    assert a != b
    ticks_a = {t["timestamp"] for batch in batches(a) for t in batch["ticks"]}
    ticks_b = {t["timestamp"] for batch in batches(b) for t in batch["ticks"]}
    assert len(ticks_a & ticks_b) < 0.01 * len(ticks_a)


def test_batches_are_well_formed(clean: list[FeedMessage]) -> None:
    feed_end = FeedSpec().start_ns + 50 * S
    assert all(isinstance(m.value, dict) for m in clean)
    ids = set()
    for m in clean:
        b = m.value
        assert isinstance(b, dict)
        symbol, provider = b["instrument"]["symbol"], b["source"]
        assert symbol in SYMBOLS and provider in PROVIDER
        assert m.key == symbol.encode()
        assert m.n_ticks == len(b["ticks"]) > 0
        assert m.publish_ns == b["timestamp"]
        ids.add(uuid.UUID(b["batchId"]).version)
        batch_ns = int(PROVIDER[provider].batch_ms * 1e6)
        for t in b["ticks"]:
            assert t["kind"] == "TRADE"
            assert FeedSpec().start_ns <= t["timestamp"] < feed_end
            assert t["timestamp"] < t["provider_timestamp"] <= b["timestamp"]
            # One batch = one flush of the provider: every tick's flush time is the batch's.
            assert (t["provider_timestamp"] // batch_ns + 1) * batch_ns == b["timestamp"]
    assert ids == {4}
    assert len({b["batchId"] for b in batches(clean)}) == len(clean)


def test_messages_are_in_publish_order_and_each_stream_flushes_once_per_tick(
    clean: list[FeedMessage],
) -> None:
    publish = [m.publish_ns for m in clean]
    assert publish == sorted(publish)
    streams: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for b in batches(clean):
        streams[b["instrument"]["symbol"], b["source"]].append(b["timestamp"])
    assert len(streams) == 2 * len(PROVIDERS)
    for times in streams.values():
        assert all(a < b for a, b in pairwise(times))


def test_outages_are_silent_and_bounded(clean: list[FeedMessage]) -> None:
    start = FeedSpec().start_ns
    by_provider: defaultdict[str, list[int]] = defaultdict(list)
    for b in batches(clean):
        by_provider[b["source"]] += [t["timestamp"] for t in b["ticks"]]
    for spec in PROVIDERS:
        ts = by_provider[spec.name]
        if spec.outage is None:
            continue
        lo, hi = (start + int(s * S) for s in spec.outage)
        assert not [t for t in ts if lo <= t < hi], spec.name
        # Not vacuous: the provider reports right up to and right after its outage.
        assert any(lo - S <= t < lo for t in ts) and any(hi <= t < hi + S for t in ts)
    # alpaca (coverage 1.0) reports every trade of the tape outside [30 s, 45 s), to the ns.
    tape = {t for ts in by_provider.values() for t in ts}
    lo, hi = (start + s * S for s in (30, 45))
    assert PROVIDER["alpaca"].coverage == 1.0 and PROVIDER["alpaca"].outage == (30, 45)
    assert set(by_provider["alpaca"]) == {t for t in tape if not lo <= t < hi}


def test_providers_observe_one_true_tape(clean: list[FeedMessage]) -> None:
    tape: defaultdict[tuple[str, int], set[tuple[float, float]]] = defaultdict(set)
    seen: Counter[str] = Counter()
    latency: defaultdict[str, list[float]] = defaultdict(list)
    for b in batches(clean):
        for t in b["ticks"]:
            tape[b["instrument"]["symbol"], t["timestamp"]].add((t["price"], t["volume"]))
            seen[b["source"]] += 1
            latency[b["source"]].append((t["provider_timestamp"] - t["timestamp"]) / 1e6)
    # Without injected faults, every provider reports the same price and size for a trade.
    assert all(len(v) == 1 for v in tape.values())
    assert all(p > 0 and v >= 1 for obs in tape.values() for p, v in obs)
    # Coverage over the time each provider was up (alpaca 100 %, polygon 98 %, finnhub 90 %).
    trades = len(tape)
    for spec in PROVIDERS:
        up = 1 - (spec.outage[1] - spec.outage[0]) / 50 if spec.outage else 1.0
        assert seen[spec.name] == pytest.approx(spec.coverage * up * trades, rel=0.05)
        assert mean(latency[spec.name]) == pytest.approx(spec.latency_ms, rel=0.25, abs=0.5)


def test_injected_faults_occur_at_roughly_the_configured_rates() -> None:
    rate = 0.02
    feed = FeedSpec(
        duration_s=20, instruments=INSTRUMENTS[:4], bad_tick_rate=rate, garbage_message_rate=rate
    )
    messages = list(generate(feed))
    prices: defaultdict[tuple[str, int], list[float]] = defaultdict(list)
    sentinel = zero_size = ticks = 0
    for b in batches(messages):
        for t in b["ticks"]:
            ticks += 1
            sentinel += t["price"] == -1.0
            zero_size += t["volume"] == 0.0
            prices[b["instrument"]["symbol"], t["timestamp"]].append(t["price"])
    # A fat finger: a positive price that disagrees with the other providers' majority.
    fat = 0
    for reported in prices.values():
        good = [p for p in reported if p > 0]
        if len(good) >= 2:
            majority, n = Counter(good).most_common(1)[0]
            if n >= 2:
                fat += sum(p != majority for p in good)
    each = rate / 3 * ticks
    for kind, count in (("sentinel", sentinel), ("zero size", zero_size), ("fat finger", fat)):
        assert 0.5 * each <= count <= 1.5 * each, f"{kind}: {count} vs ~{each:.0f}"

    garbage = [m for m in messages if not isinstance(m.value, dict)]
    expected = rate * len(batches(messages))
    assert 0.5 * expected <= len(garbage) <= 1.5 * expected
    for m in garbage:
        assert isinstance(m.value, bytes)
        assert m.value.startswith(b"\x00\x00garbage") and len(m.value) == 21
        assert m.n_ticks == 0
        assert m.key.decode() in {i.symbol for i in feed.instruments}
        assert feed.start_ns <= m.publish_ns < feed.start_ns + 20 * S


def test_no_faults_when_rates_are_zero(clean: list[FeedMessage]) -> None:
    for m in clean:
        assert isinstance(m.value, dict)
        assert all(t["price"] > 0 and t["volume"] > 0 for t in m.value["ticks"])


def test_rate_scale_multiplies_the_trade_count() -> None:
    base = FeedSpec(duration_s=5, instruments=INSTRUMENTS[:2], garbage_message_rate=0)
    one = sum(m.n_ticks for m in generate(base))
    three = sum(m.n_ticks for m in generate(dataclasses.replace(base, rate_scale=3.0)))
    assert three == pytest.approx(3 * one, rel=0.1)
