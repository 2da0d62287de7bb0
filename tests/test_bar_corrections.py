"""Late trades beyond grace: corrections of retained final bars, and the streaming conventions."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from typing import Any

import fastavro
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdstream.core.bars import BarConventions, trade_bars
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import NORMALIZED, ContractSet, load_schema_text
from mdstream.core.processor import StepOutput, process_batch

S = 1_000_000_000
MS = 1_000_000
T = 1_764_000_000 * S  # a minute boundary
CFG = PipelineConfig()  # 1s and 1m bars, 1 s grace, 30 s correction retention
CONTRACTS = ContractSet.load()


def _batch(source: str, ticks: list[tuple[int, float, float]]) -> dict[str, Any]:
    """One raw batch of trades (event time, price, size)."""
    return {
        "batchId": str(uuid.uuid4()),
        "timestamp": max(t for t, _, _ in ticks),
        "source": source,
        "instrument": {"symbol": "AAPL", "exchange": "XNAS", "isin": None},
        "ticks": [
            {
                "kind": "TRADE",
                "timestamp": t,
                "provider_timestamp": t,
                "price": p,
                "volume": v,
                "bid": None,
                "ask": None,
                "sequence": None,
                "conditions": None,
            }
            for t, p, v in ticks
        ],
    }


def _feed(state: dict[str, Any], *batches: dict[str, Any], cfg: PipelineConfig = CFG) -> StepOutput:
    total = StepOutput()
    for b in batches:
        total.add(process_batch(b, state, 0, cfg, emitted_ns=0))
    return total


def _bars(out: StepOutput, interval: str = "1s") -> dict[int, dict[str, Any]]:
    return {b["window_start"]: b for b in out.bars if b["interval"] == interval}


@pytest.fixture
def closed_second() -> tuple[dict[str, Any], dict[str, Any]]:
    """[T, T+1s) emitted as final (stream time T+2.5 s); returns (state, its bar)."""
    state: dict[str, Any] = {}
    out = _feed(
        state,
        _batch("alpaca", [(T + 300 * MS, 10.0, 1), (T + 600 * MS, 10.1, 2)]),
        _batch("alpaca", [(T + 2500 * MS, 10.2, 1)]),
    )
    first = _bars(out)[T]
    assert (first["revision"], first["correction"]) == (0, False)
    return state, first


def test_late_trade_reissues_the_bar_as_a_numbered_correction(closed_second) -> None:
    state, first = closed_second
    out = _feed(state, _batch("alpaca", [(T + 900 * MS, 10.05, 3)]))
    assert out.dead_letters == [] and out.alerts == []
    (fix,) = out.bars
    assert (fix["interval"], fix["window_start"]) == ("1s", T)
    assert (fix["revision"], fix["correction"]) == (1, True)
    assert fix["eventId"] != first["eventId"]
    o = fix["ohlcv"]
    assert (o["open"], o["high"], o["low"], o["close"]) == (10.0, 10.1, 10.0, 10.05)
    assert (o["volume"], o["trade_count"]) == (6, 3)
    assert o["vwap"] == pytest.approx((10.0 + 10.1 * 2 + 10.05 * 3) / 6)
    # A second late trade: revision 2; an earlier time changes the open, not the close.
    out = _feed(state, _batch("alpaca", [(T + 100 * MS, 9.99, 1)]))
    (fix2,) = out.bars
    assert fix2["revision"] == 2
    assert (fix2["ohlcv"]["open"], fix2["ohlcv"]["close"]) == (9.99, 10.05)
    assert len({first["eventId"], fix["eventId"], fix2["eventId"]}) == 3


def test_correction_ids_are_deterministic() -> None:
    def run() -> list[str]:
        state: dict[str, Any] = {}
        out = _feed(
            state,
            _batch("alpaca", [(T + 300 * MS, 10.0, 1), (T + 2500 * MS, 10.2, 1)]),
            _batch("alpaca", [(T + 900 * MS, 10.05, 3)]),
        )
        return [b["eventId"] for b in out.bars]

    assert run() == run()


def test_late_trade_joins_the_open_coarser_window_and_corrects_the_finer(closed_second) -> None:
    state, _ = closed_second
    _feed(state, _batch("alpaca", [(T + 900 * MS, 10.05, 3)]))
    out = _feed(state, _batch("alpaca", [(T + 62 * S, 10.1, 1)]))  # closes the minute [T, T+60s)
    minute = _bars(out, "1m")[T]
    assert minute["revision"] == 0  # the open minute bar simply took it
    assert minute["ohlcv"]["volume"] == 1 + 2 + 3 + 1
    assert minute["ohlcv"]["trade_count"] == 4


def test_late_trade_in_an_empty_final_window_creates_it_as_a_correction(closed_second) -> None:
    state, _ = closed_second
    # [T+1s, T+2s) has no trade; at stream time T+4s it is final, and gave no bar.
    out = _feed(state, _batch("alpaca", [(T + 4 * S, 10.2, 1)]))
    assert T + S not in _bars(out)
    out = _feed(state, _batch("alpaca", [(T + 1500 * MS, 10.15, 5)]))
    (new,) = out.bars
    assert (new["window_start"], new["revision"], new["correction"]) == (T + S, 1, True)
    assert new["ohlcv"]["volume"] == 5 and new["sources"] == ["alpaca"]


def test_refused_late_trades_are_dead_lettered_with_the_reason(closed_second) -> None:
    state, _ = closed_second
    before = json.dumps(state, sort_keys=True)
    out = _feed(state, _batch("polygon", [(T + 900 * MS, 10.05, 3)]))
    (dl,) = out.dead_letters
    assert dl["stage"] == "late" and "came from alpaca" in dl["reason"]
    out = _feed(state, _batch("alpaca", [(T + 900 * MS, 12.0, 3)]))  # 19% off the bar's VWAP
    (dl,) = out.dead_letters
    assert dl["stage"] == "late" and "VWAP" in dl["reason"]
    assert out.bars == []
    state_now = json.loads(json.dumps(state, sort_keys=True))
    # Nothing of the refused trades reached the retained bar.
    assert state_now["AAPL"]["final"] == json.loads(before)["AAPL"]["final"]


def test_retention_bounds_corrections_and_state(closed_second) -> None:
    state, _ = closed_second
    # [T, T+1s) was final at T+2s; with 30 s retention it is kept until T+32s.
    _feed(state, _batch("alpaca", [(T + 40 * S, 10.2, 1)]))
    assert str(T) not in state["AAPL"]["final"]["1s"]
    assert all(int(k) >= T + 8 * S for k in state["AAPL"]["final"]["1s"])
    out = _feed(state, _batch("alpaca", [(T + 900 * MS, 10.05, 3)]))
    (dl,) = out.dead_letters
    assert "retention" in dl["reason"] and out.bars == []


def test_no_retention_means_dead_letter_not_correction(closed_second) -> None:
    state, _ = closed_second
    cfg = dataclasses.replace(CFG, correction_retention_ns=0)
    out = _feed(state, _batch("alpaca", [(T + 900 * MS, 10.05, 3)]), cfg=cfg)
    assert out.bars == [] and [d["stage"] for d in out.dead_letters] == ["late"]


def test_stamp_at_end_and_right_closed_windows() -> None:
    cfg = dataclasses.replace(CFG, conventions=BarConventions(closed="right", label="end"))
    state: dict[str, Any] = {}
    # T+1s exactly belongs to (T, T+1s] when right-closed.
    out = _feed(
        state,
        _batch("alpaca", [(T + 500 * MS, 10.0, 1), (T + S, 10.1, 1)]),
        _batch("alpaca", [(T + 2 * S, 10.2, 1)]),
        cfg=cfg,
    )
    assert out.bars == []  # (T, T+1s] is final one ns after T+2s
    out = _feed(state, _batch("alpaca", [(T + 2 * S + 1, 10.2, 1)]), cfg=cfg)
    bar = _bars(out)[T]
    assert bar["ohlcv"]["trade_count"] == 2 and bar["ohlcv"]["close"] == 10.1
    assert bar["timestamp_utc"] == bar["window_end"] == T + S


def test_streaming_refuses_gap_filling_conventions() -> None:
    with pytest.raises(ValueError, match="empty"):
        PipelineConfig(conventions=BarConventions(empty="carry"))


def test_correction_fields_are_backward_compatible_avro(closed_second) -> None:
    state, _ = closed_second
    (fix,) = _feed(state, _batch("alpaca", [(T + 900 * MS, 10.05, 3)])).bars
    assert CONTRACTS.decode(CONTRACTS.encode(NORMALIZED, fix))[1]["correction"] is True
    # A reader with the new schema reads what a writer with the old schema wrote.
    new = json.loads(load_schema_text(NORMALIZED))
    old = {**new, "fields": [f for f in new["fields"] if f["name"] not in NEW_FIELDS]}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(old), fix)
    body.seek(0)
    got = fastavro.schemaless_reader(body, fastavro.parse_schema(old), fastavro.parse_schema(new))
    assert (got["revision"], got["correction"], got["session"]) == (0, False, None)


NEW_FIELDS = {"revision", "correction", "session"}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 120 * S), st.integers(1000, 1100).map(lambda c: c / 100)),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 6),
)
def test_latest_revisions_equal_aggregating_every_trade(
    ticks: list[tuple[int, float]], per_batch: int
) -> None:
    """Whatever the arrival order, with a long retention the latest revision of every window is
    the bar of all its trades: corrections lose nothing and count nothing twice."""
    cfg = dataclasses.replace(CFG, correction_retention_ns=10**15, outlier_rel=1e9)
    state: dict[str, Any] = {}
    out = StepOutput()
    rows = [(T + t, p, 1.0 + i % 3) for i, (t, p) in enumerate(ticks)]
    for lo in range(0, len(rows), per_batch):
        out.add(process_batch(_batch("alpaca", rows[lo : lo + per_batch]), state, 0, cfg, 0))
    end = T + 10 * 3600 * S
    out.add(process_batch(_batch("alpaca", [(end, 10.0, 1.0)]), state, 0, cfg, 0))
    assert out.dead_letters == []
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for bar in out.bars:
        key = (bar["interval"], bar["window_start"])
        if key not in latest or bar["revision"] > latest[key]["revision"]:
            latest[key] = bar
    tape = pl.DataFrame(rows, schema=["ts", "price", "size"], orient="row")
    for label in CFG.intervals:
        want = {r["window_start"]: r for r in trade_bars(tape, label).iter_rows(named=True)}
        got = {start: b["ohlcv"] for (lab, start), b in latest.items() if lab == label}
        assert set(got) == set(want)
        for start, bar in got.items():
            w = want[start]
            assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (
                w["open"], w["high"], w["low"], w["close"]
            )  # fmt: skip
            assert (bar["volume"], bar["trade_count"]) == (w["volume"], w["trade_count"])


def test_settings_wire_the_bar_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    from mdstream.settings import Settings

    monkeypatch.setenv("MDSTREAM_BAR_CLOSED", "right")
    monkeypatch.setenv("MDSTREAM_BAR_LABEL", "end")
    monkeypatch.setenv("MDSTREAM_CORRECTION_RETENTION_MS", "0")
    monkeypatch.setenv("MDSTREAM_INSTRUMENTS", "none")
    cfg = Settings.from_env().pipeline
    assert cfg.conventions == BarConventions(closed="right", label="end")
    assert cfg.correction_retention_ns == 0 and cfg.instruments is None
    monkeypatch.delenv("MDSTREAM_INSTRUMENTS")
    monkeypatch.delenv("MDSTREAM_CORRECTION_RETENTION_MS")
    cfg = Settings.from_env().pipeline
    assert cfg.correction_retention_ns == 30 * S
    assert cfg.instruments is not None and "SPY" in cfg.instruments.periods
