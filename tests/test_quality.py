"""The quality framework: each check, the score, conditions that raise once and clear once,
calendar-aware gaps, reliability-weighted consensus, lineage, and the isolation-forest model."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.core.batch import expand_batch, tick_event_id
from mdstream.core.config import PipelineConfig
from mdstream.core.consensus import weighted_quantile, weighted_quantiles
from mdstream.core.contracts import RAW_BATCH, RAW_EVENT, ContractSet
from mdstream.core.processor import RawMessage, StepOutput, process_batch, recompute
from mdstream.core.quality import alerts as alertlib
from mdstream.core.quality import checks, reliability, score
from mdstream.core.quality.assess import fresh_consensus
from mdstream.ingest.breaker import source_unavailable_alert

S = 1_000_000_000
MS = 1_000_000
T = 1_764_000_000 * S  # Monday 2025-11-24 16:00 UTC: inside the NYSE session
CFG = PipelineConfig()
CONTRACTS = ContractSet.load()


def tick(ts: int, price: float | None = 100.0, volume: float | None = 10.0, **kw: Any):
    return {
        "kind": "TRADE", "timestamp": ts, "provider_timestamp": ts + MS, "price": price,
        "volume": volume, "bid": None, "ask": None, "sequence": None, "conditions": None, **kw,
    }  # fmt: skip


def quote(ts: int, bid: float, ask: float) -> dict[str, Any]:
    return {**tick(ts, None, None), "kind": "QUOTE", "bid": bid, "ask": ask}


def batch(source: str, ticks: Sequence[dict[str, Any]], symbol: str = "AAPL", *,
          published: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "batchId": str(uuid.uuid4()),
        "timestamp": published or max(t["timestamp"] for t in ticks) + 5 * MS,
        "source": source,
        "instrument": {"symbol": symbol, "exchange": "XNAS", "isin": None},
        "ticks": list(ticks),
    }


def run(state: dict[str, Any], batches: Sequence[dict[str, Any]], cfg: PipelineConfig = CFG):
    total = StepOutput()
    for b in batches:
        total.add(process_batch(b, state, 0, cfg, emitted_ns=0))
    return total


def flags_of(out: StepOutput, b: dict[str, Any]) -> list[set[str]]:
    return [set(checks.names(f)) for f in out.tick_quality[b["batchId"]]["flags"]]


def kinds(out: StepOutput) -> list[tuple[str, str, str]]:
    return [(a["alert_type"], a["status"], a["source"]) for a in out.alerts]


def warm(state: dict[str, Any], providers: Sequence[str] = ("alpaca",), seconds: float = 3):
    """Every provider trading AAPL at 100.00 every 100 ms."""
    for k in range(int(seconds * 10)):
        run(state, [batch(p, [tick(T + k * 100 * MS + i * MS)]) for i, p in enumerate(providers)])
    return T + int(seconds * S)


# --------------------------------------------------------------------------------------------
# the checks, alone


def test_non_regular_conditions_are_matched_as_tokens() -> None:
    got = checks.non_regular(["@,T", None, "@", "W", "@ F", "TI", ""], {"T", "W"})
    assert got.tolist() == [True, False, False, True, False, False, False]


def test_sequences_find_duplicates_replays_and_gaps() -> None:
    dup, gap, missing = checks.sequences(np.array([5.0, 6, 6, 9, np.nan, 7, 10]), 4)
    assert dup.tolist() == [False, False, True, False, False, True, False]
    assert gap.tolist() == [False, False, False, True, False, False, False]
    assert missing == 2  # 7 and 8 before 9 (7 arrives later: a replay, not a fill)
    assert checks.sequences(np.array([np.nan, np.nan]), None)[2] == 0
    dup, gap, _ = checks.sequences(np.array([1.0, 2.0]), None)  # first ever: no gap
    assert not dup.any() and not gap.any()


def test_out_of_order_is_against_the_feed_so_far() -> None:
    got = checks.out_of_order(np.array([5, 3, 6, 6, 2]), 4)
    assert got.tolist() == [False, True, False, False, True]


def test_median_mad_has_a_floor_on_a_one_cent_grid() -> None:
    med, mad = checks.median_mad([100.0] * 30, floor_rel=5e-4)
    assert (med, mad) == (100.0, 0.05)
    med, mad = checks.median_mad([1.0, 2.0, 3.0, 4.0, 100.0], floor_rel=0.0)
    assert (med, mad) == (3.0, 1.0)  # the 100 moves neither


def test_mad_outliers_need_history() -> None:
    prices = np.array([100.0, 103.0])
    flagged, med, _ = checks.mad_outliers([100.0] * 5, prices, k=10, floor_rel=5e-4,
                                          min_history=20)  # fmt: skip
    assert not flagged.any() and math.isnan(med)
    flagged, med, mad = checks.mad_outliers([100.0] * 20, prices, k=10, floor_rel=5e-4,
                                            min_history=20)  # fmt: skip
    assert flagged.tolist() == [False, True] and (med, mad) == (100.0, 0.05)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(1, 1000), st.floats(0, 10)), min_size=1, max_size=8).filter(
        lambda pw: sum(w for _, w in pw) > 0
    )
)
def test_weighted_quantiles_agree_with_weighted_quantile(pw: list[tuple[float, float]]) -> None:
    prices, weights = [p for p, _ in pw], [w for _, w in pw]
    qs = (0.25, 0.5, 0.75)
    assert weighted_quantiles(prices, weights, qs) == [
        weighted_quantile(prices, weights, q) for q in qs
    ]


# --------------------------------------------------------------------------------------------
# score components


def test_score_components_and_weights() -> None:
    assert score.completeness(fresh=2, known=3, received=90, missing=10) == pytest.approx(0.6)
    assert score.accuracy(np.array([0.0, 0.01, 0.02, 0.5, np.nan]), 0.02).tolist() == [
        1.0, 0.5, 0.0, 0.0, 1.0,
    ]  # fmt: skip
    lat = np.array([0, 250, 2625, 5000, 9000]) * MS
    assert score.timeliness(lat, 250 * MS, 5000 * MS).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert score.consistency(None, 0.02) == 1.0
    assert score.combine(1, 1, 1, 1) == pytest.approx(1.0)
    assert score.combine(0, 1, 0, 0) == pytest.approx(0.4)  # accuracy weighs 0.4
    assert score.combine(1, 0, 1, 1) == pytest.approx(0.6)  # an outlier alone: below 0.8


def test_tick_scores_follow_deviation_and_latency() -> None:
    state: dict[str, Any] = {}
    t = warm(state, ("alpaca", "polygon"))
    fine = batch("polygon", [tick(t, 100.0)])
    off = batch("polygon", [tick(t + MS, 101.0)])  # 1 % from consensus: accuracy 0.5
    late = batch("polygon", [tick(t + 2 * MS, 100.0)], published=t + 2627 * MS)
    out = run(state, [fine, off, late])
    s = {k: v["scores"][0] for k, v in out.tick_quality.items()}
    assert s[fine["batchId"]] == pytest.approx(1.0)
    # 101 is also 20 MADs from polygon's flat history: excluded, accuracy 0.
    assert s[off["batchId"]] == pytest.approx(0.6)
    assert s[late["batchId"]] == pytest.approx(0.9)  # timeliness 0.5 × 0.2


def test_bar_quality_metrics_and_lineage() -> None:
    state: dict[str, Any] = {}
    messages = [
        batch("alpaca", [tick(T + k * 100 * MS)], published=T + k * 100 * MS + 2625 * MS)
        for k in range(25)
    ]
    total, offsets = StepOutput(), {}
    for offset, b in enumerate(messages):
        offsets[b["batchId"]] = offset
        total.add(process_batch(b, state, 3, CFG, emitted_ns=0, offset=offset))
    bar = next(b for b in total.bars if b["interval"] == "1s" and b["window_start"] == T)
    q = bar["quality_metrics"]
    assert q["completeness"] == 1.0 and q["accuracy_score"] == 1.0
    assert q["timeliness_score"] == pytest.approx(0.5)
    assert q["quality_score"] == pytest.approx(0.9)
    lin = bar["lineage"]
    assert (lin["raw_partition"], lin["raw_offset_first"], lin["raw_offset_last"]) == (3, 0, 9)
    assert (lin["raw_batches"], lin["raw_ticks"]) == (10, 10)
    assert "statistical_mad" in lin["checks_passed"] and lin["flags"] == []
    # The windows of closed bars are forgotten.
    assert f"1s|{T}" not in state["AAPL"]["windows"]


def test_expand_batch_carries_the_tick_verdicts() -> None:
    state: dict[str, Any] = {}
    t = warm(state)
    b = batch("alpaca", [tick(t, 100.0), tick(t - 500 * MS, 100.0), tick(t + MS, -1.0)])
    out = run(state, [b])
    events = expand_batch(b, quality=out.tick_quality[b["batchId"]])
    assert [e["metadata"]["quality_flags"] for e in events] == [[], ["OUT_OF_ORDER"], []]
    assert events[2]["metadata"]["quality_score"] == 0.0  # rejected
    assert events[0]["metadata"]["quality_score"] == pytest.approx(1.0)
    assert events[1]["eventId"] == tick_event_id(b["batchId"], 1)
    for e in events:
        assert CONTRACTS.decode(CONTRACTS.encode(RAW_EVENT, e), RAW_EVENT)[1] == e
    assert expand_batch(b)[0]["metadata"]["quality_score"] is None


# --------------------------------------------------------------------------------------------
# semantic and temporal checks in the step


def test_non_regular_trades_stay_out_of_bars_and_price() -> None:
    state: dict[str, Any] = {}
    t = warm(state)
    b = batch("alpaca", [tick(t, 100.5, conditions="@,T"), tick(t + MS, 100.01, conditions="@")])
    out = run(state, [b])
    assert flags_of(out, b) == [{"NON_REGULAR"}, set()]
    assert state["AAPL"]["providers"]["alpaca"]["price"] == 100.01
    assert state["AAPL"]["windows"][f"1s|{t}"]["alpaca"][0] == 1
    assert out.alerts == []


def test_locked_and_wide_quotes_are_flagged_not_rejected() -> None:
    state: dict[str, Any] = {}
    t = warm(state)
    normal = [quote(t + k * MS, 99.99, 100.01) for k in range(30)]
    later = [quote(t + (40 + k) * MS, 99.99, 100.01) for k in range(3)]
    b = batch("alpaca", [*later, quote(t + 50 * MS, 100.0, 100.0), quote(t + 51 * MS, 98, 102)])
    out = run(state, [batch("alpaca", normal), b])
    assert out.dead_letters == []
    assert flags_of(out, b)[-2:] == [{"LOCKED_QUOTE"}, {"WIDE_SPREAD"}]  # 4.00 > 50 × 0.02
    assert all(f == set() for f in flags_of(out, b)[:-2])


def test_sequence_gap_raises_missing_data_once_and_clears() -> None:
    state: dict[str, Any] = {}
    t = warm(state)
    seq = [tick(t + k * MS, 100.0, sequence=k + 1) for k in range(3)]
    gap = [tick(t + 10 * MS, 100.0, sequence=10), tick(t + 11 * MS, 100.0, sequence=14)]
    dup = [tick(t + 12 * MS, 100.0, sequence=14)]
    out = run(state, [batch("alpaca", seq), b := batch("alpaca", gap), d := batch("alpaca", dup)])
    assert kinds(out) == [("MISSING_DATA", "RAISED", "alpaca")]
    assert out.alerts[0]["metrics"]["observed"] == 9.0  # 4..9 and 11..13
    assert flags_of(out, b) == [{"SEQUENCE_GAP"}, {"SEQUENCE_GAP"}]
    assert flags_of(out, d) == [{"DUPLICATE"}]
    assert state["AAPL"]["windows"][f"1s|{t}"]["alpaca"][0] == 5  # the duplicate is not in
    more = [batch("alpaca", [tick(t + (20 + k) * MS, 100.0, sequence=15 + k)]) for k in range(25)]
    out = run(state, more)
    assert kinds(out) == [("MISSING_DATA", "CLEARED", "alpaca")]


def test_ticks_outside_the_session_are_flagged() -> None:
    state: dict[str, Any] = {}
    evening = T + 6 * 3600 * S  # 22:00 UTC, after the close
    b = batch("alpaca", [tick(evening, 100.0)])
    out = run(state, [b])
    assert flags_of(out, b) == [{"OUTSIDE_SESSION"}]
    assert out.alerts == []


# --------------------------------------------------------------------------------------------
# instrument gaps against the calendar and normal activity


def _two_instruments(
    aapl_until: float, seconds: float, msft_every: float = 0.1, start: int = T
) -> StepOutput:
    state: dict[str, Any] = {}
    out = StepOutput()
    k = 0
    while k * 0.1 < seconds:
        t = start + int(k * 0.1 * S)
        if k * 0.1 < aapl_until or k * 0.1 >= aapl_until + 60:
            out.add(process_batch(batch("alpaca", [tick(t)], "AAPL"), state, 0, CFG, 0))
        if abs(k * 0.1 / msft_every - round(k * 0.1 / msft_every)) < 1e-9:
            out.add(process_batch(batch("alpaca", [tick(t + MS, 50.0)], "MSFT"), state, 0, CFG, 0))
        k += 1
    return out


def test_a_silent_instrument_in_session_is_missing_once_then_cleared() -> None:
    out = _two_instruments(aapl_until=10, seconds=90)
    missing = [a for a in out.alerts if a["alert_type"] == "MISSING_DATA"]
    assert [(a["instrument"], a["status"], a["source"]) for a in missing] == [
        ("AAPL", "RAISED", "*"),
        ("AAPL", "CLEARED", "*"),
    ]
    raised, cleared = missing
    assert T + 40 * S < raised["timestamp"] <= T + 41 * S  # 30 s minimum gap after 10 s
    assert cleared["timestamp"] == T + 70 * S
    assert raised["severity"] == cleared["severity"] == "HIGH"


def test_a_quiet_instrument_is_not_a_gap() -> None:
    # AAPL trades every 0.1 s; MSFT only every 5 s: its 5 s silences are normal for it.
    out = _two_instruments(aapl_until=1000, seconds=200, msft_every=5.0)
    assert [a for a in out.alerts if a["alert_type"] == "MISSING_DATA"] == []


def test_silence_while_the_market_is_closed_is_not_a_gap() -> None:
    close = T + 5 * 3600 * S  # 21:00 UTC, the close
    # AAPL stops 5 s before the close (and resumes 60 s later); MSFT trades on after hours.
    start = close - 20 * S
    out = _two_instruments(aapl_until=15, seconds=110, start=start)
    assert [a for a in out.alerts if a["alert_type"] == "MISSING_DATA"] == []


# --------------------------------------------------------------------------------------------
# conditions, severities, degraded quality


def test_conditions_raise_once_and_clear_with_their_severity() -> None:
    conds: dict[str, Any] = {}
    first = alertlib.raise_once(conds, "OUTLIER_DETECTED", "HIGH", "p", "X", "d", 1, "k1")
    again = alertlib.raise_once(conds, "OUTLIER_DETECTED", "MEDIUM", "p", "X", "d", 2, "k2")
    assert first is not None and again is None
    cleared = alertlib.clear(conds, "OUTLIER_DETECTED", "p", "X", "ok", 3)
    assert cleared is not None
    assert (cleared["status"], cleared["severity"]) == ("CLEARED", "HIGH")
    assert alertlib.clear(conds, "OUTLIER_DETECTED", "p", "X", "ok", 4) is None
    assert alertlib.severity_topic("md.quality.alerts", "HIGH") == "md.quality.alerts.high"
    with pytest.raises(ValueError):
        alertlib.severity_topic("md.quality.alerts", "SEVERE")


def test_source_unavailable_is_critical_at_both_ends() -> None:
    opened = source_unavailable_alert("finnhub", "RAISED", 3, 5 * S, "circuit breaker open")
    closed = source_unavailable_alert("finnhub", "CLEARED", 3, 9 * S, "recovered")
    assert (opened["status"], closed["status"]) == ("RAISED", "CLEARED")
    assert opened["severity"] == closed["severity"] == "CRITICAL"
    assert opened["eventId"] != closed["eventId"]
    again = source_unavailable_alert("finnhub", "RAISED", 3, 6 * S, "circuit breaker open")
    assert again["eventId"] == opened["eventId"]  # the same outage: the same id
    assert CONTRACTS.decode(CONTRACTS.encode("DataQualityAlertEvent", closed))[1] == closed


def test_quality_below_threshold_raises_quality_degraded_and_clears() -> None:
    state: dict[str, Any] = {}
    run(state, [batch("polygon", [tick(T - 3 * S)])])  # polygon is known, then goes stale
    slow = [  # 9 s latency (timeliness 0), half the providers stale: score 0.65
        batch("alpaca", [tick(T + k * 100 * MS)], published=T + k * 100 * MS + 9 * S)
        for k in range(200)
    ]
    out = run(state, slow)
    degraded = [a for a in out.alerts if a["alert_type"] == "QUALITY_DEGRADED"]
    assert [(a["status"], a["severity"]) for a in degraded] == [("RAISED", "MEDIUM")]
    assert degraded[0]["metrics"]["quality_score"] < 0.8
    fast = [
        batch(p, [tick(T + 20 * S + k * 100 * MS + i * MS)])
        for k in range(200)
        for i, p in enumerate(("alpaca", "polygon"))
    ]
    out = run(state, fast)
    degraded = [a for a in out.alerts if a["alert_type"] == "QUALITY_DEGRADED"]
    assert [(a["status"], a["severity"], a["source"]) for a in degraded] == [
        ("CLEARED", "MEDIUM", "alpaca")
    ]
    assert degraded[0]["metrics"]["quality_score"] >= 0.85


# --------------------------------------------------------------------------------------------
# reliability and consensus


def test_reliability_figures() -> None:
    rel = reliability.new()
    reliability.observe_time(rel, 0, True, 300 * S)
    reliability.observe_time(rel, 30 * S, True, 300 * S)
    reliability.observe_time(rel, 40 * S, False, 300 * S)  # stale for the last 10 s
    reliability.observe_ticks(rel, 100, 10, 90 * 50.0, 80.0, 90)
    f = reliability.figures(rel, 250.0, 5000.0)
    assert f["uptime"] == pytest.approx(30 / 40, rel=0.02)
    assert f["error_rate"] == pytest.approx(0.1)
    assert f["latency_ms"] == pytest.approx(50.0)
    assert f["agreement"] == pytest.approx(80 / 90)
    assert f["reliability"] == pytest.approx(
        0.3 * f["uptime"] + 0.3 * 0.9 + 0.1 * 1.0 + 0.3 * f["agreement"]
    )


def test_an_unreliable_provider_weighs_less_in_the_consensus() -> None:
    state: dict[str, Any] = {}
    # alpaca at 100.00; polygon and iex at 100.10; finnhub at 100.00 but half its ticks are bad.
    for k in range(50):
        t = T + k * 100 * MS
        run(state, [
            batch("alpaca", [tick(t, 100.0)]),
            batch("polygon", [tick(t + MS, 100.1)]),
            batch("iex", [tick(t + 2 * MS, 100.1)]),
            batch("finnhub", [tick(t + 3 * MS, 100.0), tick(t + 4 * MS, -1.0)]),
        ])  # fmt: skip
    providers = state["AAPL"]["providers"]
    figures = {name: reliability.figures(p["rel"], 250.0, 5000.0) for name, p in providers.items()}
    assert figures["finnhub"]["error_rate"] == pytest.approx(0.5, rel=1e-4)  # 6-digit state
    assert figures["finnhub"]["reliability"] < figures["alpaca"]["reliability"] - 0.1
    # Equal weights: the lower middle, 100.00. Reliability weights tip it to 100.10.
    assert weighted_quantile([100.0, 100.1, 100.1, 100.0], [1, 1, 1, 1], 0.5) == 100.0
    consensus = fresh_consensus(providers, CFG.quality, T + 5 * S)
    assert consensus is not None and consensus.price == 100.1
    assert (consensus.p25, consensus.p75) == (100.0, 100.1)


# --------------------------------------------------------------------------------------------
# the generated feed: every injected fault caught, nothing raised on clean data


def _replay(feed: Any, cfg: PipelineConfig = CFG) -> tuple[StepOutput, list[Any]]:
    from mdstream.core.simulate import generate

    messages = list(generate(feed))
    raw = [
        RawMessage(CONTRACTS.encode(RAW_BATCH, m.value) if isinstance(m.value, dict) else m.value,
                   m.key, "md.raw", 0, i)
        for i, m in enumerate(messages)
    ]  # fmt: skip
    out, _, _ = recompute(raw, cfg, CONTRACTS)
    return out, messages


def injected_fat_fingers(messages: Sequence[Any]) -> set[tuple[str, int]]:
    """(batchId, index) of the generator's fat fingers (prices × 0.8, 1.25 or 10): trades more
    than 10 % from the median of every provider's trades of the instrument within ±0.5 s."""
    rows = [
        (m.value["instrument"]["symbol"], t["timestamp"], t["price"], m.value["batchId"], i)
        for m in messages
        if isinstance(m.value, dict)
        for i, t in enumerate(m.value["ticks"])
        if t["price"] > 0 and t["volume"] > 0
    ]
    fat = set()
    for symbol in {r[0] for r in rows}:
        mine = sorted((r for r in rows if r[0] == symbol), key=lambda r: r[1])
        ts = np.array([r[1] for r in mine])
        px = np.array([r[2] for r in mine])
        lo = np.searchsorted(ts, ts - S // 2)
        hi = np.searchsorted(ts, ts + S // 2)
        for k, r in enumerate(mine):
            if abs(r[2] / float(np.median(px[lo[k] : hi[k]])) - 1) > 0.1:
                fat.add((r[3], r[4]))
    return fat


def test_every_injected_fault_is_caught() -> None:
    from mdstream.core.simulate import INSTRUMENTS, FeedSpec

    feed = FeedSpec(duration_s=40, bad_tick_rate=0.003, garbage_message_rate=0.002, seed=5,
                    instruments=INSTRUMENTS[:3])  # fmt: skip
    out, messages = _replay(feed)
    fat = injected_fat_fingers(messages)
    assert len(fat) >= 5
    excluded = {
        (batch_id, i)
        for batch_id, q in out.tick_quality.items()
        for i, f in enumerate(q["flags"])
        if f & int(checks.EXCLUDING)
    }
    assert fat <= excluded
    assert len(excluded - fat) <= len(fat) // 5  # few clean trades excluded with them
    kinds_seen = {(a["alert_type"], a["status"]) for a in out.alerts}
    assert ("OUTLIER_DETECTED", "RAISED") in kinds_seen
    # Both generated outages (alpaca 30-45 s, finnhub 15-30 s) on every instrument.
    stale = {(a["instrument"], a["source"]) for a in out.alerts
             if a["alert_type"] == "STALE_DATA" and a["status"] == "RAISED"}  # fmt: skip
    assert stale == {(i.symbol, p) for i in INSTRUMENTS[:3] for p in ("alpaca", "finnhub")}


def test_no_alert_on_a_long_clean_feed() -> None:
    from mdstream.core.simulate import INSTRUMENTS, PROVIDERS, FeedSpec

    clean = FeedSpec(
        duration_s=60, bad_tick_rate=0, garbage_message_rate=0, seed=9,
        instruments=INSTRUMENTS[:4],
        providers=tuple(dataclasses.replace(p, outage=None) for p in PROVIDERS),
    )  # fmt: skip
    out, _ = _replay(clean)
    assert out.bars and out.alerts == [] and out.dead_letters == []
    scores = [b["quality_metrics"]["quality_score"] for b in out.bars]
    assert min(scores) > 0.95


# --------------------------------------------------------------------------------------------
# configuration


def test_expected_interval_is_per_feed() -> None:
    cfg = dataclasses.replace(CFG, expected_interval_ns={"finnhub": 10 * S})
    state: dict[str, Any] = {}
    for k in range(100):  # 10 s of alpaca; polygon and finnhub silent after 1 s
        t = T + k * 100 * MS
        bs = [batch("alpaca", [tick(t)])]
        if k < 10:
            bs += [batch("polygon", [tick(t + MS)]), batch("finnhub", [tick(t + 2 * MS)])]
        run(state, bs, cfg)
    providers = state["AAPL"]["providers"]
    assert providers["polygon"]["stale"] and not providers["finnhub"]["stale"]


def test_a_lone_feed_s_persistent_level_shift_is_accepted_after_a_run_of_outliers() -> None:
    # A 2:1 split's ex-date on a raw feed: the price halves for good.
    state: dict[str, Any] = {}
    t = warm(state, ("alpaca",))
    n = CFG.quality.level_shift_after
    out = StepOutput()
    for k in range(n + 30):
        b = batch("alpaca", [tick(t + k * 50 * MS, 50.0 + (k % 3) * 0.01)])
        step = run(state, [b])
        out.add(step)
        expected = {"LEVEL_SHIFT"} if k == n - 1 else {"CROSS_SOURCE_OUTLIER"} if k < n else set()
        assert flags_of(step, b)[0] == expected, k
    assert 49.9 < state["AAPL"]["providers"]["alpaca"]["price"] < 50.1
    assert [(a["alert_type"], a["status"]) for a in out.alerts] == [
        ("OUTLIER_DETECTED", "RAISED"),
        ("OUTLIER_DETECTED", "CLEARED"),
    ]
    # A lone fat finger is not a level shift: one print, excluded, and the level stays.
    b = batch("alpaca", [tick(t + 5 * S, 500.0)])
    assert flags_of(run(state, [b]), b) == [{"CROSS_SOURCE_OUTLIER"}]


def test_a_level_shift_seen_by_a_second_provider_is_accepted_at_once() -> None:
    state: dict[str, Any] = {}
    t = warm(state, ("alpaca", "polygon", "finnhub"))
    first = batch("alpaca", [tick(t, 50.0)])
    second = batch("polygon", [tick(t + MS, 50.01)])
    third = batch("finnhub", [tick(t + 2 * MS, 50.0)])
    out = run(state, [first, second, third])
    assert flags_of(out, first) == [{"CROSS_SOURCE_OUTLIER"}]  # alone, it may be a fat finger
    assert flags_of(out, second) == [{"LEVEL_SHIFT"}]  # the same level from another provider
    assert flags_of(out, third) == [set()]  # now the consensus is there
    assert out.consensus["AAPL"]["price"] == 50.01  # alpaca's excluded print left it at 100


# --------------------------------------------------------------------------------------------
# lineage


def test_every_bar_traces_back_to_exactly_the_raw_events_that_made_it() -> None:
    from mdstream.core.quality.lineage import trace
    from mdstream.core.simulate import INSTRUMENTS, FeedSpec, generate

    feed = FeedSpec(duration_s=6, bad_tick_rate=0.01, garbage_message_rate=0.01, seed=3,
                    instruments=INSTRUMENTS[:2])  # fmt: skip
    raw = [
        RawMessage(CONTRACTS.encode(RAW_BATCH, m.value) if isinstance(m.value, dict) else m.value,
                   m.key, "md.raw", i % 2, i // 2)
        for i, m in enumerate(generate(feed))
    ]  # fmt: skip
    out, _, _ = recompute(raw, CFG, CONTRACTS)
    bars = [b for b in out.bars if b["interval"] == "1s"]
    assert len(bars) >= 8
    excluded_somewhere = False
    for bar in bars:
        lin = bar["lineage"]
        assert lin["raw_partition"] in (0, 1)
        assert lin["raw_offset_first"] <= lin["raw_offset_last"]
        traced = trace(bar, raw, CFG, CONTRACTS)
        assert traced["consistent"], (bar["ohlcv"], traced["trades_entered"])
        assert traced["trades_entered"] == bar["ohlcv"]["trade_count"] == lin["raw_ticks"]
        excluded_somewhere |= any(not e["entered_bar"] for e in traced["events"])
        assert {o for o in (e["raw_offset"] for e in traced["events"])} <= set(
            range(lin["raw_offset_first"], lin["raw_offset_last"] + 1)
        )
    assert excluded_somewhere  # the faults were in the windows and were left out
    with pytest.raises(ValueError, match="no raw offsets"):
        trace({**bars[0], "lineage": {**bars[0]["lineage"], "raw_partition": None}}, raw, CFG,
              CONTRACTS)  # fmt: skip


def test_quality_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdstream.settings import Settings

    monkeypatch.setenv("MDSTREAM_EXPECTED_INTERVAL_MS", "alpaca=500, finnhub=5000")
    monkeypatch.setenv("MDSTREAM_DEFAULT_EXPECTED_INTERVAL_MS", "2000")
    monkeypatch.setenv("MDSTREAM_NON_REGULAR_CONDITIONS", "T,W")
    monkeypatch.setenv("MDSTREAM_QUALITY_MODEL", "/models/etf-abc.npz")
    monkeypatch.setenv("MDSTREAM_TOPIC_PREFIX", "x.")
    s = Settings.from_env()
    assert s.pipeline.expected_interval_ns == {"alpaca": 500 * MS, "finnhub": 5000 * MS}
    assert s.pipeline.expected_interval("polygon") == 2000 * MS
    assert s.pipeline.quality.non_regular_conditions == {"T", "W"}
    assert s.pipeline.quality.model_for("ETF") == "/models/etf-abc.npz"
    monkeypatch.setenv("MDSTREAM_QUALITY_MODEL", "ETF=/models/etf-abc.npz, EQUITY=/models/eq.npz")
    by_group = Settings.from_env().pipeline.quality
    assert by_group.model_for("EQUITY") == "/models/eq.npz"
    assert by_group.model_for("ETF") == "/models/etf-abc.npz"
    assert by_group.model_for("FUTURE") is None
    monkeypatch.setenv("MDSTREAM_QUALITY_MODEL", "/models/etf-abc.npz")
    assert s.topics.consensus == "x.md.quality.consensus"
    assert s.topics.alerts_by_severity()["CRITICAL"] == "x.md.quality.alerts.critical"
    assert s.topics.consensus not in s.topics.outputs()  # not co-compared by the crash test
    monkeypatch.setenv("MDSTREAM_EXPECTED_INTERVAL_MS", "alpaca")
    with pytest.raises(ValueError, match="provider=milliseconds"):
        Settings.from_env()


def test_consensus_events_on_change_at_most_once_a_second() -> None:
    state: dict[str, Any] = {}
    out = StepOutput()
    for k in range(50):  # 5 s; the price moves on every batch
        out.add(process_batch(batch("alpaca", [tick(T + k * 100 * MS, 100 + k / 100)]), state, 0,
                              CFG, emitted_ns=0))  # fmt: skip
    events = out.consensus_events
    assert [e["as_of"] for e in events] == [T + k * S for k in range(5)]
    assert events[-1]["price"] == pytest.approx(100.4)
    (vote,) = events[-1]["sources"]
    assert (vote["provider"], vote["price"]) == ("alpaca", 100.4)
    assert 0.99 < vote["weight"] <= 1.0  # its reliability (timeliness not quite perfect)
    assert len({e["eventId"] for e in events}) == 5
    # Unchanged: nothing, however long.
    quiet = [batch("alpaca", [tick(T + 6 * S + k * S, 100.49)]) for k in range(5)]
    out = run(state, quiet)
    assert len(out.consensus_events) == 1
