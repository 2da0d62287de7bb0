"""The pipeline with the instrument master: enriched bars; unknown symbols and bad identifiers
refused with an alert and a dead letter, never a crash and never a guess."""

from __future__ import annotations

import dataclasses
import json
import uuid
import zlib
from typing import Any

import pytest

from mdstream.core.contracts import NORMALIZED, RAW_BATCH, ContractSet
from mdstream.core.instruments import load_master
from mdstream.core.processor import (
    PipelineConfig,
    RawMessage,
    StepOutput,
    handle_raw_message,
    process_batch,
    recompute,
)
from mdstream.core.simulate import FeedSpec, generate

S = 1_000_000_000
MS = 1_000_000
T = 1_764_000_000 * S  # 2025-11-24T16:00:00Z: 11:00 in New York, a Monday
PRE_MARKET = T - 3 * 3600 * S  # 08:00 New York
CFG = PipelineConfig(instruments=load_master())
CONTRACTS = ContractSet.load()


def _batch(
    symbol: str, ticks: list[tuple[int, float]], isin: str | None = None, source: str = "alpaca"
) -> dict[str, Any]:
    return {
        "batchId": str(uuid.uuid4()),
        "timestamp": max(t for t, _ in ticks),
        "source": source,
        "instrument": {"symbol": symbol, "exchange": None, "isin": isin},
        "ticks": [
            {
                "kind": "TRADE",
                "timestamp": t,
                "provider_timestamp": t,
                "price": p,
                "volume": 10.0,
                "bid": None,
                "ask": None,
                "sequence": None,
                "conditions": None,
            }
            for t, p in ticks
        ],
    }


def _feed(state: dict[str, Any], *batches: dict[str, Any]) -> StepOutput:
    total = StepOutput()
    for b in batches:
        total.add(process_batch(b, state, 0, CFG, emitted_ns=0))
    return total


@pytest.mark.parametrize(
    ("symbol", "start", "mic", "kind", "session"),
    [
        ("SPY", T, "ARCX", "ETF", "REGULAR"),
        ("JPM", T, "XNYS", "EQUITY", "REGULAR"),
        ("AAPL", PRE_MARKET, "XNAS", "EQUITY", "PRE"),
        ("AAPL", T + 6 * 3600 * S, "XNAS", "EQUITY", "POST"),  # 17:00 New York
    ],
)
def test_bars_carry_exchange_type_id_and_session(
    symbol: str, start: int, mic: str, kind: str, session: str
) -> None:
    state: dict[str, Any] = {}
    out = _feed(state, _batch(symbol, [(start + 100 * MS, 100.0), (start + 3 * S, 100.0)]))
    bar = next(b for b in out.bars if b["interval"] == "1s")
    assert bar["instrument"]["exchange"] == mic
    assert bar["instrument"]["instrument_type"] == kind
    assert bar["instrument"]["instrument_id"] == CFG.instruments.resolve(symbol, T).instrument_id
    assert bar["instrument"]["isin"] == CFG.instruments.resolve(symbol, T).isin
    assert bar["session"] == session
    assert CONTRACTS.decode(CONTRACTS.encode(NORMALIZED, bar))[1]["session"] == session


def _refused(out: StepOutput, state: dict[str, Any], reason: str) -> None:
    (alert,) = out.alerts
    (dl,) = out.dead_letters
    assert alert["alert_type"] == "INVALID_DATA" and alert["severity"] == "HIGH"
    assert reason in alert["description"] and reason in dl["reason"]
    assert dl["stage"] == "reference"
    assert json.loads(dl["payload"])["ticks"]  # the whole batch is kept for replay
    assert out.bars == []


def test_unknown_symbol_is_refused_without_state_change() -> None:
    state: dict[str, Any] = {}
    out = _feed(state, _batch("ZZZZ", [(T, 10.0)]))
    _refused(out, state, "'ZZZZ' is not in the instrument master")
    assert state == {}
    again = _feed(state, _batch("ZZZZ", [(T, 10.0)]))
    assert again.alerts[0]["eventId"] != out.alerts[0]["eventId"]  # another batch, another alert


def test_invalid_isin_check_digit_is_refused() -> None:
    state: dict[str, Any] = {}
    out = _feed(state, _batch("AAPL", [(T, 228.5)], isin="US0378331006"))
    _refused(out, state, "invalid ISIN")
    assert state == {}


def test_isin_of_another_instrument_is_refused() -> None:
    state: dict[str, Any] = {}
    out = _feed(state, _batch("AAPL", [(T, 228.5)], isin="US5949181045"))  # MSFT's
    _refused(out, state, "is not AAPL's")


def test_refusal_through_the_kafka_step_never_raises() -> None:
    value = CONTRACTS.encode(RAW_BATCH, _batch("ZZZZ", [(T, 10.0)]))
    result = handle_raw_message(value, b"ZZZZ", "raw", 0, 7, {}, CFG, CONTRACTS, 0)
    (dl,) = result.output.dead_letters
    assert (dl["stage"], dl["source_offset"]) == ("reference", 7)
    assert result.state_writes == {}


def test_simulated_feed_is_fully_known_and_deterministic() -> None:
    feed = FeedSpec(duration_s=6, start_ns=T, bad_tick_rate=0, garbage_message_rate=0)
    raw, offsets = [], {}
    for msg in generate(feed):
        p = zlib.crc32(msg.key) % 4
        offsets[p] = offsets.get(p, -1) + 1
        raw.append(
            RawMessage(CONTRACTS.encode(RAW_BATCH, msg.value), msg.key, "raw", p, offsets[p])
        )
    out, _, _ = recompute(raw, CFG, CONTRACTS)
    assert out.dead_letters == []
    assert not [a for a in out.alerts if a["alert_type"] == "INVALID_DATA"]
    assert len(out.bars) > 8 * 3
    assert {b["session"] for b in out.bars} == {"REGULAR"}
    assert all(b["instrument"]["instrument_id"] for b in out.bars)
    again, _, _ = recompute(raw, CFG, CONTRACTS)
    assert again.bars == out.bars


def test_without_a_master_nothing_is_checked() -> None:
    cfg = dataclasses.replace(CFG, instruments=None)
    out = process_batch(_batch("ZZZZ", [(T, 10.0), (T + 3 * S, 10.0)]), {}, 0, cfg, 0)
    assert out.dead_letters == [] and out.bars and out.bars[0]["session"] is None
