"""The raw → bars/alerts/dead-letters step: staleness, outliers, dead letters, atomicity, replay."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from mdstream.core import bars as barlib
from mdstream.core import processor
from mdstream.core.batch import tick_event_id
from mdstream.core.contracts import ALERT, RAW_BATCH, ContractSet
from mdstream.core.processor import (
    PipelineConfig,
    RawMessage,
    StagedWrites,
    StepOutput,
    clock_key,
    handle_raw_message,
    process_batch,
    recompute,
)
from mdstream.core.simulate import INSTRUMENTS, PROVIDERS, FeedSpec, generate

S = 1_000_000_000
MS = 1_000_000
T = 1_764_000_000 * S
CFG = PipelineConfig()
CONTRACTS = ContractSet.load()

Tick = tuple[int, float, float]  # (event time, price, size)


def _tick(ts: int, price: float | None, volume: float | None) -> dict[str, Any]:
    return {
        "kind": "TRADE",
        "timestamp": ts,
        "provider_timestamp": ts + MS,
        "price": price,
        "volume": volume,
        "bid": None,
        "ask": None,
        "sequence": None,
        "conditions": None,
    }


def _quote(ts: int, bid: float, ask: float) -> dict[str, Any]:
    return {**_tick(ts, None, None), "kind": "QUOTE", "bid": bid, "ask": ask}


def batch(
    source: str,
    ticks: Sequence[Tick | dict[str, Any]],
    symbol: str = "AAPL",
    *,
    batch_id: str | None = None,
    exchange: str = "XNAS",
) -> dict[str, Any]:
    rows = [t if isinstance(t, dict) else _tick(*t) for t in ticks]
    return {
        "batchId": batch_id or str(uuid.uuid4()),
        "timestamp": max(r["timestamp"] for r in rows) + 5 * MS,
        "source": source,
        "instrument": {"symbol": symbol, "exchange": exchange, "isin": None},
        "ticks": rows,
    }


def run(state: dict[str, Any], batches: Iterable[dict[str, Any]]) -> StepOutput:
    total = StepOutput()
    for b in batches:
        total.add(process_batch(b, state, 0, CFG, emitted_ns=0))
    return total


def stale_alerts(out: StepOutput) -> list[tuple[str, str, str]]:
    return [
        (a["instrument"], a["source"], a["status"])
        for a in out.alerts
        if a["alert_type"] == "STALE_DATA"
    ]


# --------------------------------------------------------------------------------------------
# staleness


def test_stale_provider_raises_once_and_clears_once_per_instrument_and_provider() -> None:
    """AAPL from alpaca throughout; AAPL from polygon silent in [5 s, 10 s); MSFT from polygon
    throughout. Expected every 1 s, stale after 2 s without an update."""
    batches = []
    consensus_providers: dict[int, int] = {}
    for k in range(120):  # every 100 ms for 12 s
        t = T + k * 100 * MS
        batches.append(batch("alpaca", [(t, 100.0, 1)]))
        if not 50 <= k < 100:
            batches.append(batch("polygon", [(t + 10 * MS, 100.01, 1)]))
        batches.append(batch("polygon", [(t + 20 * MS, 50.0, 1)], symbol="MSFT"))

    state: dict[str, Any] = {}
    alerts = []
    for b in batches:
        out = process_batch(b, state, 0, CFG, emitted_ns=0)
        alerts += [a for a in out.alerts if a["alert_type"] == "STALE_DATA"]
        if "AAPL" in out.consensus:
            t = b["ticks"][0]["timestamp"]
            consensus_providers[t] = out.consensus["AAPL"]["providers"]

    assert [(a["instrument"], a["source"], a["status"]) for a in alerts] == [
        ("AAPL", "polygon", "RAISED"),
        ("AAPL", "polygon", "CLEARED"),
    ]
    raised, cleared = alerts
    last_polygon = T + 49 * 100 * MS + 10 * MS
    # Detected on the first alpaca tick more than 2 s after polygon's last: T + 7.0 s.
    assert raised["timestamp"] == T + 70 * 100 * MS
    assert raised["severity"] == "HIGH"
    assert raised["metrics"]["last_update"] == last_polygon
    assert raised["metrics"]["expected_frequency"] == "1s"
    assert raised["metrics"]["reference"] == 2.0
    assert raised["metrics"]["observed"] == pytest.approx((T + 7 * S - last_polygon) / S)
    assert cleared["timestamp"] == T + 100 * 100 * MS + 10 * MS  # polygon's first tick back
    # Cleared with the severity it was raised with: both ends reach the same severity topic.
    assert cleared["severity"] == "HIGH"
    assert raised["eventId"] != cleared["eventId"]
    # A stale provider leaves the consensus while it is stale, and comes back with it.
    assert consensus_providers[T + 4 * S] == 2
    assert consensus_providers[T + 8 * S] == 1
    assert consensus_providers[T + 11 * S] == 2


def test_quotes_keep_a_provider_fresh_without_making_bars() -> None:
    state: dict[str, Any] = {}
    batches = []
    for k in range(60):
        t = T + k * 100 * MS
        batches.append(batch("polygon", [(t, 100.0, 1)]))
        batches.append(batch("alpaca", [_quote(t + MS, 99.99, 100.01)]))
    out = run(state, batches)
    assert stale_alerts(out) == []
    assert out.bars and all(b["sources"] == ["polygon"] for b in out.bars)
    assert out.consensus["AAPL"]["providers"] == 1  # alpaca has no trade price to offer


def _outage_feed(alpaca_out: tuple[float, float], finnhub_out: tuple[float, float]) -> FeedSpec:
    return FeedSpec(
        duration_s=10,
        bad_tick_rate=0,
        garbage_message_rate=0,
        instruments=tuple(i for i in INSTRUMENTS if i.symbol in {"NVDA", "SPY"}),
        providers=(
            dataclasses.replace(PROVIDERS[0], outage=alpaca_out),
            PROVIDERS[1],
            dataclasses.replace(PROVIDERS[2], outage=finnhub_out),
        ),
    )


def _raw(feed: FeedSpec, partitions: int = 4) -> list[RawMessage]:
    offsets: Counter[int] = Counter()
    raw = []
    for m in generate(feed):
        value = m.value if isinstance(m.value, bytes) else CONTRACTS.encode(RAW_BATCH, m.value)
        p = zlib.crc32(m.key) % partitions
        raw.append(RawMessage(value, m.key, "md.raw", p, offsets[p]))
        offsets[p] += 1
    return raw


def test_generated_outages_alert_only_when_longer_than_the_stale_threshold() -> None:
    # alpaca silent 4 s (> 2 s): stale; finnhub silent 1.5 s (< 2 s): not stale.
    out, _, _ = recompute(_raw(_outage_feed((3.0, 7.0), (1.0, 2.5))), CFG, CONTRACTS)
    assert sorted(stale_alerts(out)) == [
        ("NVDA", "alpaca", "CLEARED"),
        ("NVDA", "alpaca", "RAISED"),
        ("SPY", "alpaca", "CLEARED"),
        ("SPY", "alpaca", "RAISED"),
    ]
    for a in out.alerts:
        if a["status"] == "RAISED":
            assert T + 3 * S - 2 * S <= a["metrics"]["last_update"] < T + 3 * S
            assert T + 5 * S <= a["timestamp"] < T + 7 * S


# --------------------------------------------------------------------------------------------
# outliers


def _three_providers_at(price: float, seconds: int = 2) -> list[dict[str, Any]]:
    out = []
    for k in range(seconds * 10):
        t = T + k * 100 * MS
        for i, p in enumerate(("alpaca", "polygon", "finnhub")):
            out.append(batch(p, [(t + i * MS, price, 10)]))
    return out


def test_outlier_trade_alerts_and_is_excluded_from_bars() -> None:
    state: dict[str, Any] = {}
    run(state, _three_providers_at(100.0))
    t = T + 2 * S + 100 * MS
    fat = batch("alpaca", [(t, 100.01, 5), (t + MS, 1000.0, 7), (t + 2 * MS, 100.02, 5)])
    out = run(state, [fat])
    (alert,) = out.alerts
    assert alert["alert_type"] == "OUTLIER_DETECTED"
    assert alert["status"] == "RAISED"
    assert alert["severity"] == "HIGH"  # 900 % away, more than 5 × the 2 % threshold
    assert (alert["source"], alert["instrument"], alert["timestamp"]) == ("alpaca", "AAPL", t + MS)
    assert alert["metrics"]["observed"] == 1000.0
    assert alert["metrics"]["reference"] == 100.0
    # The outlier is not alpaca's latest price either.
    assert out.consensus["AAPL"]["price"] == 100.0

    out = run(state, [batch("alpaca", [(T + 4 * S, 100.0, 1)])])
    bar = {b["window_start"]: b for b in out.bars if b["interval"] == "1s"}[T + 2 * S]
    assert bar["sources"] == ["alpaca"]
    assert bar["ohlcv"]["high"] == 100.02
    assert bar["ohlcv"]["volume"] == 5 + 5  # two of the three trades
    assert bar["ohlcv"]["trade_count"] == 2
    assert bar["ohlcv"]["vwap"] == pytest.approx(100.015, rel=1e-12)


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        (103.0, ("MEDIUM", "from the reference 100")),
        (97.0, ("MEDIUM", "from the reference 100")),
        (109.0, ("MEDIUM", "from the reference 100")),
        (111.0, ("HIGH", "from the reference 100")),  # beyond 5 × the 2 % threshold
        # Within 2 % of the consensus, but 30 MADs from a feed that sat at 100.00: statistical.
        (101.5, ("MEDIUM", "from its rolling median (10 MADs) 100")),
        (100.3, None),  # 6 MADs (the MAD floor is 5 bp): in line
        (100.0, None),
    ],
)
def test_outlier_severity_and_threshold(price: float, expected: tuple[str, str] | None) -> None:
    state: dict[str, Any] = {}
    run(state, _three_providers_at(100.0))
    t = T + 2 * S + 100 * MS
    out = run(state, [batch("polygon", [(t, price, 1)])])
    if expected is None:
        assert out.alerts == []
        assert state["AAPL"]["providers"]["polygon"]["price"] == price
        return
    (alert,) = out.alerts
    assert (alert["alert_type"], alert["severity"]) == ("OUTLIER_DETECTED", expected[0])
    assert alert["metrics"]["observed"] == price
    assert state["AAPL"]["providers"]["polygon"]["price"] == 100.0  # excluded
    assert expected[1] in alert["description"]
    window = state["AAPL"]["windows"].get(f"1s|{T + 2 * S}", {})
    assert "polygon" not in window  # not in any bar


def test_outliers_raise_once_per_feed_and_clear_after_clean_trades() -> None:
    state: dict[str, Any] = {}
    run(state, _three_providers_at(100.0))
    t = T + 2 * S + 100 * MS
    prices = [103.0, 101.5, 97.0, 109.0, 111.0, 100.0]
    out = run(state, [batch("polygon", [(t + i * MS, p, 1) for i, p in enumerate(prices)])])
    (raised,) = out.alerts  # five outliers, one condition: no storm
    assert (raised["status"], raised["metrics"]["observed"]) == ("RAISED", 103.0)
    clear_after = CFG.quality.clear_after_clean
    clean = [batch("polygon", [(t + S + k * MS, 100.0, 1)]) for k in range(clear_after)]
    out = run(state, clean[:-2])
    assert out.alerts == []  # one clean trade came with the outliers: one batch still to go
    out = run(state, clean[-2:-1])
    (cleared,) = out.alerts
    assert (cleared["alert_type"], cleared["status"]) == ("OUTLIER_DETECTED", "CLEARED")
    assert cleared["severity"] == raised["severity"]
    assert cleared["source"] == "polygon"
    # A new offence after clearing raises a new condition, with a new id.
    out = run(state, [batch("polygon", [(t + 2 * S, 150.0, 1)])])
    (again,) = [a for a in out.alerts if a["alert_type"] == "OUTLIER_DETECTED"]
    assert again["status"] == "RAISED" and again["eventId"] != raised["eventId"]


def test_lone_provider_is_checked_against_its_own_last_price() -> None:
    state: dict[str, Any] = {}
    out = run(
        state,
        [
            batch("alpaca", [(T, 100.0, 1)]),
            batch("alpaca", [(T + 100 * MS, 1000.0, 1), (T + 200 * MS, 100.5, 1)]),
        ],
    )
    assert [a["metrics"]["observed"] for a in out.alerts] == [1000.0]
    assert out.alerts[0]["metrics"]["reference"] == 100.0


def test_provider_last_price_is_the_last_arrived_trade_like_the_bar_close() -> None:
    state: dict[str, Any] = {}
    t = T + 500 * MS
    out = run(state, [batch("alpaca", [(t, 100.0, 1), (t, 100.5, 1)])])
    closed = run(state, [batch("alpaca", [(T + 2 * S, 100.5, 1)])])
    assert closed.bars[0]["ohlcv"]["close"] == 100.5
    assert out.consensus["AAPL"]["price"] == 100.5


# --------------------------------------------------------------------------------------------
# dead letters


def test_invalid_ticks_are_dead_lettered_with_the_original_tick() -> None:
    state: dict[str, Any] = {}
    ticks = [
        _tick(T + 100 * MS, 100.0, 10),
        _tick(T + 200 * MS, -1.0, 10),  # sentinel
        _tick(T + 300 * MS, 100.1, 0.0),  # zero size
        _quote(T + 350 * MS, 100.2, 100.1),  # crossed
        _tick(T + 400 * MS, 100.2, 20),
    ]
    b = batch("polygon", ticks, batch_id="2f1d8c3e-9a7b-4c6d-8e5f-0a1b2c3d4e5f")
    out = process_batch(b, state, 0, CFG, emitted_ns=42, key=b"AAPL")
    assert [(d["stage"], d["reason"]) for d in out.dead_letters] == [
        ("validate", "trade price not positive (sentinel or bad print)"),
        ("validate", "trade size not positive"),
        ("validate", "crossed quote (bid above ask)"),
    ]
    for d, i in zip(out.dead_letters, (1, 2, 3), strict=True):
        payload = json.loads(d["payload"])
        assert payload["tick"] == ticks[i]
        assert payload["eventId"] == tick_event_id(b["batchId"], i)
        assert payload["eventId"] == str(uuid.uuid5(uuid.UUID(b["batchId"]), str(i)))
        assert (payload["batchId"], payload["source"]) == (b["batchId"], "polygon")
        assert payload["instrument"] == b["instrument"]
        assert (d["source"], d["key"], d["timestamp"]) == ("polygon", b"AAPL", 42)
    assert out.alerts == []
    out = run(state, [batch("polygon", [(T + 2 * S, 100.2, 1)])])
    (bar,) = [b for b in out.bars if b["interval"] == "1s"]
    assert (bar["ohlcv"]["trade_count"], bar["ohlcv"]["volume"]) == (2, 30)


def test_all_invalid_batch_changes_no_bar_and_no_clock() -> None:
    state: dict[str, Any] = {}
    run(state, [batch("alpaca", [(T + 100 * MS, 100.0, 1)])])
    before = copy.deepcopy(state)
    out = run(state, [batch("alpaca", [(T + 9 * S, -1.0, 1), (T + 9 * S, 100.0, 0)])])
    assert len(out.dead_letters) == 2 and out.bars == []
    assert state[clock_key(0)] == before[clock_key(0)]
    assert state["AAPL"]["bars"] == before["AAPL"]["bars"]
    # Only the provider's error count moved: rejected ticks count against its reliability.
    rel, rel_before = (s["AAPL"]["providers"]["alpaca"]["rel"] for s in (state, before))
    assert (rel["ticks"], rel["errors"]) == (rel_before["ticks"] + 2, rel_before["errors"] + 2)
    (quality,) = out.tick_quality.values()
    assert quality == {"scores": [0.0, 0.0], "flags": [0, 0]}


def _message(record: dict[str, Any], offset: int = 0) -> RawMessage:
    return RawMessage(CONTRACTS.encode(RAW_BATCH, record), b"AAPL", "md.raw", 2, offset)


def _handle(m: RawMessage, state: dict[str, Any], emitted_ns: int = 7) -> processor.MessageResult:
    return handle_raw_message(
        m.value, m.key, m.topic, m.partition, m.offset, state, CFG, CONTRACTS, emitted_ns
    )


@pytest.fixture
def warm_state() -> dict[str, Any]:
    state: dict[str, Any] = {}
    first = _handle(_message(batch("alpaca", [(T + 100 * MS, 100.0, 1)])), state)
    state.update(first.state_writes)
    assert set(first.state_writes) == {"AAPL", clock_key(2)}
    return state


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x00\x00garbage\x01\x02", "unknown schema id"),
        (b"", "not a framed Avro message"),
        (None, "not a framed Avro message"),  # a tombstone
        (b"\x07{}" * 4, "bad magic byte 7"),
        (CONTRACTS.encode(ALERT, {
            "eventId": "x", "timestamp": 1, "alert_type": "STALE_DATA", "severity": "LOW",
            "status": "RAISED", "source": "s", "instrument": "i", "description": "d",
            "metrics": {},
        }), "DataQualityAlertEvent where RawMarketDataBatch was expected"),
    ],
)  # fmt: skip
def test_undecodable_message_is_one_decode_dead_letter_and_no_state_write(
    warm_state: dict[str, Any], value: Any, reason: str
) -> None:
    before = copy.deepcopy(warm_state)
    result = handle_raw_message(value, b"AAPL", "md.raw", 2, 17, warm_state, CFG, CONTRACTS, 99)
    assert result.state_writes == {}
    assert warm_state == before
    (d,) = result.output.dead_letters
    assert d["stage"] == "decode"
    assert reason in d["reason"]
    assert d["payload"] == (value or b"")
    assert (d["source_topic"], d["source_partition"], d["source_offset"]) == ("md.raw", 2, 17)
    assert (d["key"], d["timestamp"]) == (b"AAPL", 99)
    assert result.output.bars == result.output.alerts == []


def test_processing_failure_is_a_process_dead_letter_and_no_state_write(
    warm_state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> StepOutput:
        raise RuntimeError("boom")

    monkeypatch.setattr(processor, "process_batch", boom)
    before = copy.deepcopy(warm_state)
    m = _message(batch("alpaca", [(T + 5 * S, 100.0, 1)]), offset=1)
    result = _handle(m, warm_state)
    assert result.state_writes == {}
    assert warm_state == before
    (d,) = result.output.dead_letters
    assert (d["stage"], d["reason"]) == ("process", "RuntimeError: boom")
    assert d["payload"] == m.value  # the whole message, replayable
    assert (d["source_topic"], d["source_partition"], d["source_offset"]) == ("md.raw", 2, 1)


def test_failure_after_accumulating_leaves_the_state_untouched(
    warm_state: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = barlib.accumulate

    def accumulate_then_fail(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise RuntimeError("disk full")

    monkeypatch.setattr(barlib, "accumulate", accumulate_then_fail)
    before = copy.deepcopy(warm_state)
    result = _handle(_message(batch("polygon", [(T + 300 * MS, 100.0, 1)]), offset=1), warm_state)
    assert [d["stage"] for d in result.output.dead_letters] == ["process"]
    assert result.state_writes == {}
    assert warm_state == before


def test_parked_batch_does_not_change_instrument_reference_data(
    warm_state: dict[str, Any],
) -> None:
    before = copy.deepcopy(warm_state)
    bad = batch("alpaca", [(T + 300 * MS, -1.0, 1)], batch_id="not-a-uuid", exchange="XNYS")
    result = _handle(_message(bad, offset=1), warm_state)
    # Tick ids derive from the batch id: one that is no UUID is refused before any step.
    assert [d["stage"] for d in result.output.dead_letters] == ["decode"]
    assert "batchId 'not-a-uuid' is not a UUID" in result.output.dead_letters[0]["reason"]
    assert warm_state == before


def test_successful_step_stamps_dead_letters_with_their_source_position(
    warm_state: dict[str, Any],
) -> None:
    bad = batch("alpaca", [(T + 200 * MS, 100.0, 1), (T + 300 * MS, 100.0, 0.0)])
    result = _handle(_message(bad, offset=5), warm_state)
    (d,) = result.output.dead_letters
    assert d["stage"] == "validate"
    assert (d["source_topic"], d["source_partition"], d["source_offset"]) == ("md.raw", 2, 5)
    assert set(result.state_writes) == {"AAPL", clock_key(2)}


def test_staged_writes_read_through_and_keep_writes_aside() -> None:
    base = {"a": 1, "b": 2}
    staged = StagedWrites(base)
    staged["a"] = 10
    staged["c"] = 3
    assert (staged["a"], staged["b"], staged["c"]) == (10, 2, 3)
    assert (staged.get("a"), staged.get("zz"), staged.get("zz", 5)) == (10, None, 5)
    assert base == {"a": 1, "b": 2}
    assert staged.writes == {"a": 10, "c": 3}
    with pytest.raises(KeyError):
        staged["zz"]
    with pytest.raises(NotImplementedError):
        del staged["a"]
    with pytest.raises(NotImplementedError):
        iter(staged)
    with pytest.raises(NotImplementedError):
        len(staged)


# --------------------------------------------------------------------------------------------
# recompute over a faulty generated feed: deterministic, stable ids, faults accounted for

FAULTY = FeedSpec(
    duration_s=8,
    bad_tick_rate=0.01,
    garbage_message_rate=0.01,
    seed=11,
    instruments=tuple(i for i in INSTRUMENTS if i.symbol in {"AAPL", "JPM", "QQQ"}),
)


Recomputed = tuple[StepOutput, dict[str, Any], dict[str, Any]]


@dataclasses.dataclass
class Faulty:
    messages: list[Any]
    raw: list[RawMessage]
    result: Recomputed


@pytest.fixture(scope="module")
def faulty() -> Faulty:
    raw = _raw(FAULTY)
    return Faulty(list(generate(FAULTY)), raw, recompute(raw, CFG, CONTRACTS))


def _canonical(result: Recomputed) -> str:
    out, state, consensus = result
    return json.dumps(
        [out.bars, out.alerts, out.dead_letters, state, consensus],
        sort_keys=True,
        default=lambda b: b.hex(),
    )


def test_recompute_is_deterministic_and_order_independent(faulty: Faulty) -> None:
    first = faulty.result
    shuffled = list(faulty.raw)
    random.Random(3).shuffle(shuffled)
    second = recompute(shuffled, CFG, CONTRACTS)
    assert _canonical(first) == _canonical(second)
    assert first[0].bars and first[0].alerts and first[0].dead_letters


def test_event_ids_are_stable_and_unique(faulty: Faulty) -> None:
    out, raw = faulty.result[0], faulty.raw
    # Another run with another emission time: same ids, only `timestamp` differs.
    state: dict[str, Any] = {}
    bars, alerts = [], []
    for m in sorted(raw, key=lambda m: (m.partition, m.offset)):
        result = _handle(m, state, emitted_ns=123_456)
        state.update(result.state_writes)
        bars += result.output.bars
        alerts += result.output.alerts
    assert [b["eventId"] for b in bars] == [b["eventId"] for b in out.bars]
    assert [a["eventId"] for a in alerts] == [a["eventId"] for a in out.alerts]
    assert {b["timestamp"] for b in bars} == {123_456}
    ids = [b["eventId"] for b in out.bars]
    assert len(set(ids)) == len(ids)
    keys = {(b["instrument"]["symbol"], b["interval"], b["window_start"]) for b in out.bars}
    assert len(keys) == len(ids)  # one id per (instrument, interval, window)
    alert_ids = [a["eventId"] for a in out.alerts]
    assert len(set(alert_ids)) == len(alert_ids)


def test_injected_faults_are_all_accounted_for(faulty: Faulty) -> None:
    messages, out = faulty.messages, faulty.result[0]
    garbage = sum(isinstance(m.value, bytes) for m in messages)
    bad = [
        (m.value["batchId"], i)
        for m in messages
        if isinstance(m.value, dict)
        for i, t in enumerate(m.value["ticks"])
        if t["price"] <= 0 or t["volume"] <= 0
    ]
    stages = Counter(d["stage"] for d in out.dead_letters)
    assert garbage > 0 and bad
    assert stages == {"decode": garbage, "validate": len(bad)}
    parked = {
        (json.loads(d["payload"])["batchId"], json.loads(d["payload"])["eventId"])
        for d in out.dead_letters
        if d["stage"] == "validate"
    }
    assert parked == {(b, tick_event_id(b, i)) for b, i in bad}
    assert any(a["alert_type"] == "OUTLIER_DETECTED" for a in out.alerts)
    # Fat fingers were kept out: every bar stays within 2 % of its own VWAP.
    for b in out.bars:
        o = b["ohlcv"]
        assert o["high"] <= o["vwap"] * 1.02 and o["low"] >= o["vwap"] * 0.98, b
        assert all(math.isfinite(o[k]) for k in ("open", "high", "low", "close", "vwap"))
