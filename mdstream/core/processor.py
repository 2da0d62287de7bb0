"""The raw → bars/alerts/dead-letters step: a pure function of (batch, partition state).

The same step runs in the Faust agent (state = RocksDB-backed tables) and in a plain batch
recomputation over the raw topic (state = dicts). Exactly-once is then checkable: the streamed
output must equal the recomputed one, however often the worker died.

Determinism is the contract: nothing here reads the wall clock except `emitted_ns`, which goes only
into the `timestamp` (emission time) fields of output events (stage timings, for metrics, come
from a monotonic clock and never reach an output).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mdstream.core import bars as barlib
from mdstream.core.batch import TickColumns, stable_id, tick_event_id
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import ContractSet, DecodeError
from mdstream.core.instruments import InstrumentMaster, ReferenceProblem, session_of
from mdstream.core.quality import activity
from mdstream.core.quality import assess as quality
from mdstream.core.quality.alerts import alert
from mdstream.core.validation import rejections

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    bars: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    consensus: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per raw batch id: each tick's quality score and check flags
    # (mdstream.core.quality.checks.Check bits), for RawMarketDataEvent.metadata
    # (see mdstream.core.batch.expand_batch).
    tick_quality: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    # ConsensusPriceEvent records: the consensus when it changed (for the compacted topic).
    consensus_events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, other: StepOutput) -> None:
        """Append another step's outputs (the latest consensus per instrument wins)."""
        self.bars += other.bars
        self.alerts += other.alerts
        self.dead_letters += other.dead_letters
        self.consensus.update(other.consensus)
        self.tick_quality.update(other.tick_quality)
        self.consensus_events += other.consensus_events


def clock_key(partition: int) -> str:
    """State key of a partition's stream clock (its own key per partition: one store spans many)."""
    return f"\x00clock/{partition}"


def dead_letter(
    stage: str,
    reason: str,
    payload: bytes,
    *,
    emitted_ns: int,
    source: str | None = None,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, Any]:
    return {
        "timestamp": emitted_ns,
        "stage": stage,
        "reason": reason,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "source": source,
        "key": key,
        "payload": payload,
    }


def _tick_payload(cols: TickColumns, index: int) -> bytes:
    return json.dumps(
        {
            "eventId": tick_event_id(cols.batch_id, index),
            "batchId": cols.batch_id,
            "source": cols.source,
            "instrument": dict(cols.instrument),
            "tick": cols.tick(index),
        },
        default=str,
        allow_nan=True,
    ).encode()


def _bar_event(
    bar: barlib.FinalBar,
    state: dict[str, Any],
    symbol: str,
    emitted_ns: int,
    cfg: PipelineConfig,
) -> dict[str, Any]:
    instrument = state.get("instrument", {})
    present = len(bar.providers_present)
    known = max(len(state.get("providers", {})), 1)
    revision = (bar.revision,) if bar.revision else ()
    metrics, lineage = quality.bar_quality(
        state, bar.interval, bar.window_start, bar.source, present / known, cfg
    )
    return {
        "eventId": stable_id("bar", symbol, bar.interval, bar.window_start, *revision),
        "timestamp": emitted_ns,
        "instrument": {
            "symbol": symbol,
            "exchange": instrument.get("exchange"),
            "isin": instrument.get("isin"),
            "instrument_type": instrument.get("instrument_type", "EQUITY"),
            "instrument_id": instrument.get("instrument_id"),
        },
        "ohlcv": {
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
            "vwap": bar.vwap,
            "trade_count": bar.trade_count,
        },
        "timestamp_utc": bar.window_end if cfg.conventions.label == "end" else bar.window_start,
        "interval": bar.interval,
        "window_start": bar.window_start,
        "window_end": bar.window_end,
        "quality_metrics": metrics,  # see mdstream.core.quality.score
        "adjustments_applied": [],
        "sources": [bar.source],
        "revision": bar.revision,
        "correction": bar.revision > 0,
        "session": session_of(bar.window_start, instrument["exchange"])
        if cfg.instruments is not None and instrument.get("exchange")
        else None,
        "lineage": lineage,
    }


def _close_partition_windows(
    state: MutableMapping[str, Any],
    clock: dict[str, Any],
    cfg: PipelineConfig,
    out: StepOutput,
    emitted_ns: int,
) -> None:
    widths = cfg.interval_widths
    closed = cfg.conventions.closed
    due = sorted(sym for sym, at in clock["open"].items() if at <= clock["t"])
    for symbol in due:
        inst = state[symbol]
        retained = inst.setdefault("final", {}) if cfg.correction_retention_ns else None
        for bar in barlib.close_due(
            inst["bars"], widths, clock["t"], cfg.grace_ns, cfg.provider_priority, closed, retained
        ):
            out.bars.append(_bar_event(bar, inst, symbol, emitted_ns, cfg))
        if retained is not None:
            barlib.prune_retained(
                retained, widths, clock["t"], cfg.grace_ns, cfg.correction_retention_ns, closed
            )
        nxt = barlib.earliest_close(inst["bars"], widths, cfg.grace_ns, closed)
        if nxt is None:
            del clock["open"][symbol]
        else:
            clock["open"][symbol] = nxt
        state[symbol] = inst


def _reference(
    cols: TickColumns,
    master: InstrumentMaster,
    out: StepOutput,
    emitted_ns: int,
    key: bytes | None,
) -> dict[str, Any] | None:
    """The master's view of the batch's instrument, or None after refusing the batch: an unknown
    symbol or an identifier that is invalid or contradicts the master is never guessed."""
    symbol = cols.symbol
    at = int(cols.ts.min()) if len(cols) else cols.published_ns
    try:
        known = master.verify(symbol, at, cols.instrument.get("isin"))
    except ReferenceProblem as exc:
        reason = str(exc)
    else:
        return {
            "instrument_id": known.instrument_id,
            "exchange": known.mic,
            "isin": known.isin,
            "instrument_type": known.instrument_type,
        }
    out.alerts.append(
        alert(
            "INVALID_DATA",
            "HIGH",
            "RAISED",
            cols.source,
            symbol,
            f"batch of {len(cols)} ticks refused: {reason}",
            at,
            cols.batch_id,
        )
    )
    out.dead_letters.append(
        dead_letter(
            "reference",
            reason,
            json.dumps(cols.to_record(), default=str, allow_nan=True).encode(),
            emitted_ns=emitted_ns,
            source=cols.source,
            key=key,
        )
    )
    return None


def _correct_late(
    inst: dict[str, Any],
    clock: dict[str, Any],
    symbol: str,
    provider: str,
    cols: TickColumns,
    late: np.ndarray,
    cfg: PipelineConfig,
    out: StepOutput,
    emitted_ns: int,
) -> list[str | None]:
    """Late trades revise their retained final bars (emitted as corrections); returns, per tick,
    why it cannot be applied (None: applied, or not late)."""
    reasons: list[str | None] = [None] * len(cols)
    beyond = (
        f"event time {{}} is beyond the grace period ({cfg.grace_ns} ns) of stream time "
        f"{clock['t']}: its bars are already final"
    )
    for i in np.flatnonzero(late & ~cols.is_trade):
        reasons[i] = beyond.format(int(cols.ts[i]))
    trades = np.flatnonzero(late & cols.is_trade)
    if not len(trades):
        return reasons
    if not cfg.correction_retention_ns:
        for i in trades:
            reasons[i] = beyond.format(int(cols.ts[i]))
        return reasons
    closed = cfg.conventions.closed
    retained = inst.setdefault("final", {})
    barlib.prune_retained(
        retained,
        cfg.interval_widths,
        clock["t"],
        cfg.grace_ns,
        cfg.correction_retention_ns,
        closed,
    )
    revised, refused = barlib.correct_late_trades(
        inst["bars"],
        retained,
        cfg.interval_widths,
        provider,
        cols.ts[trades],
        cols.price[trades],
        cols.volume[trades],
        clock["t"],
        cfg.grace_ns,
        cfg.correction_retention_ns,
        cfg.outlier_rel,
        closed,
    )
    for i, reason in zip(trades, refused, strict=True):
        reasons[i] = reason
    out.bars += [_bar_event(bar, inst, symbol, emitted_ns, cfg) for bar in revised]
    nxt = barlib.earliest_close(inst["bars"], cfg.interval_widths, cfg.grace_ns, closed)
    if nxt is not None:
        clock["open"][symbol] = nxt
    return reasons


def process_batch(
    batch: TickColumns | Mapping[str, Any],
    state: MutableMapping[str, Any],
    partition: int,
    cfg: PipelineConfig,
    emitted_ns: int,
    *,
    key: bytes | None = None,
    offset: int | None = None,
    timings: dict[str, float] | None = None,
) -> StepOutput:
    """Apply one RawMarketDataBatch (its columns, or a decoded record) to a partition's state;
    return what it emits.

    Order within the step: validate → drop late ticks → quality checks (outliers, temporal,
    statistical; `mdstream.core.quality.assess`) → provider freshness and staleness → accumulate
    bars → advance stream time → close every window of the partition that became final. `offset` is
    the raw message's offset, for lineage. `timings` receives the seconds spent per stage
    (validate, quality, bars), for metrics only: they never reach an output.
    """
    t0 = time.perf_counter()
    out = StepOutput()
    cols = batch if isinstance(batch, TickColumns) else TickColumns.from_record(batch)
    symbol, provider = cols.symbol, cols.source
    clock = state.get(clock_key(partition)) or {"t": 0, "open": {}}
    inst = state.get(symbol) or {"providers": {}, "bars": {}, "instrument": {}}
    if cfg.instruments is not None:
        reference = _reference(cols, cfg.instruments, out, emitted_ns, key)
        if reference is None:
            return out  # refused: alert and dead letter, no state change
        inst["instrument"] = reference
    elif cols.instrument.get("isin") or cols.instrument.get("exchange"):
        inst["instrument"] = {
            "exchange": cols.instrument.get("exchange"),
            "isin": cols.instrument.get("isin"),
        }

    ok = np.ones(len(cols), dtype=bool)
    for i, reason in rejections(cols, cfg.validation).items():
        ok[i] = False
        out.dead_letters.append(
            dead_letter(
                "validate",
                reason,
                _tick_payload(cols, i),
                emitted_ns=emitted_ns,
                source=provider,
                key=key,
            )
        )

    finest = min(cfg.interval_widths.values())
    closed = cfg.conventions.closed
    late = ok & barlib.is_late(cols.ts, finest, clock["t"], cfg.grace_ns, closed)
    reasons = _correct_late(inst, clock, symbol, provider, cols, late, cfg, out, emitted_ns)
    for i in np.flatnonzero(late):
        if reasons[i] is None:
            continue
        out.dead_letters.append(
            dead_letter(
                "late",
                reasons[i],
                _tick_payload(cols, int(i)),
                emitted_ns=emitted_ns,
                source=provider,
                key=key,
            )
        )
    ok &= ~late
    t1 = time.perf_counter()
    rejected = len(cols) - int(ok.sum())
    if not ok.any():
        quality.record_rejections(inst, provider, rejected)
        out.tick_quality[cols.batch_id] = {"scores": [0.0] * len(cols), "flags": [0] * len(cols)}
        state[symbol] = inst
        state[clock_key(partition)] = clock
        return out

    now = int(cols.ts[ok].max())
    providers: dict[str, dict[str, Any]] = inst["providers"]
    assessment = quality.assess_batch(
        cols, ok, inst, cfg, rejected=rejected, partition=partition, offset=offset
    )
    out.alerts += assessment.alerts
    out.tick_quality[cols.batch_id] = {
        "scores": assessment.scores.tolist(),
        "flags": assessment.flags.tolist(),
    }
    trades = assessment.bar_trades

    # Freshness of this provider; staleness of the others, judged on this instrument's event time.
    me = providers[provider]
    me["ts"] = max(me["ts"], now)
    if trades.any():
        # The last trade to arrive at the latest timestamp, as the bar close takes it.
        idx = np.flatnonzero(trades)
        last = int(idx[np.flatnonzero(cols.ts[idx] == cols.ts[idx].max())[-1]])
        me["price"] = float(cols.price[last])
    out.alerts += quality.staleness(inst, symbol, provider, now, cfg)
    consensus = quality.fresh_consensus(providers, cfg.quality, now)
    if consensus is not None:
        out.consensus[symbol] = consensus.to_record()
        out.consensus_events += quality.consensus_changes(
            inst, symbol, consensus, emitted_ns, cfg.quality.consensus_publish_every_ns
        )

    t2 = time.perf_counter()
    barlib.accumulate(
        inst["bars"],
        cfg.interval_widths,
        provider,
        cols.ts[trades],
        cols.price[trades],
        cols.volume[trades],
        closed,
    )
    nxt = barlib.earliest_close(inst["bars"], cfg.interval_widths, cfg.grace_ns, closed)
    if nxt is not None:
        clock["open"][symbol] = nxt
    state[symbol] = inst
    before = clock["t"]
    clock["t"] = max(clock["t"], now)
    out.alerts += activity.observe(clock, symbol, now, int(ok.sum()), cfg.quality)
    out.alerts += activity.scan(clock, before, cfg.quality)
    _close_partition_windows(state, clock, cfg, out, emitted_ns)
    state[clock_key(partition)] = clock
    if timings is not None:
        timings.update(validate=t1 - t0, quality=t2 - t1, bars=time.perf_counter() - t2)
    return out


def _copy(value: Any) -> Any:
    """A deep copy of plain state data; a pickle round trip is ~5× faster than deepcopy."""
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


class StagedWrites(MutableMapping[str, Any]):
    """Reads through to the state and keeps writes aside: a failed step changes nothing."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state
        self.writes: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.writes[key] if key in self.writes else _copy(self.state[key])

    def get(self, key: str, default: Any = None) -> Any:
        """Values read from the state are copies: the step may change them in place."""
        if key in self.writes:
            return self.writes[key]
        return _copy(self.state.get(key, default))

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes[key] = value

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError("the pipeline never deletes state keys")

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError("the pipeline never scans state")

    def __len__(self) -> int:
        raise NotImplementedError("the pipeline never counts state")


@dataclass
class MessageResult:
    output: StepOutput
    state_writes: dict[str, Any]
    ticks: int = 0  # in the message (0 when it could not be decoded)
    #: Seconds per stage (decode, validate, quality, bars), for metrics; not an output.
    stage_seconds: dict[str, float] = field(default_factory=dict)


def handle_raw_message(
    value: bytes,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    state: Mapping[str, Any],
    cfg: PipelineConfig,
    contracts: ContractSet,
    emitted_ns: int,
) -> MessageResult:
    """One Kafka message of the raw topic, whatever its bytes: decoded and processed, or parked in
    a dead letter with the reason. Never raises for bad input; state changes only on success."""

    def parked(stage: str, reason: str) -> MessageResult:
        record = dead_letter(
            stage,
            reason,
            bytes(value or b""),
            emitted_ns=emitted_ns,
            key=key,
            topic=topic,
            partition=partition,
            offset=offset,
        )
        return MessageResult(StepOutput(dead_letters=[record]), {})

    t = time.perf_counter()
    try:
        batch = contracts.decode_raw_batch(value)
    except DecodeError as exc:
        return parked("decode", str(exc))
    timings = {"decode": time.perf_counter() - t}
    staged = StagedWrites(state)
    try:
        out = process_batch(
            batch, staged, partition, cfg, emitted_ns, key=key, offset=offset, timings=timings
        )
    except Exception as exc:  # a poison message must not stop the worker: park it, go on
        log.exception("batch at %s[%d]@%d failed", topic, partition, offset)
        return parked("process", f"{type(exc).__name__}: {exc}")
    for record in out.dead_letters:
        record.update(source_topic=topic, source_partition=partition, source_offset=offset)
    return MessageResult(out, staged.writes, len(batch), timings)


@dataclass(frozen=True)
class RawMessage:
    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int


def recompute(
    messages: Iterable[RawMessage], cfg: PipelineConfig, contracts: ContractSet
) -> tuple[StepOutput, dict[str, Any], dict[str, Any]]:
    """The whole raw topic in one pass, in partition/offset order: (outputs, state, consensus).

    This is what streaming must have produced, exactly once, whatever happened to the workers.
    """
    total, state = StepOutput(), {}
    for m in sorted(messages, key=lambda m: (m.topic, m.partition, m.offset)):
        result = handle_raw_message(
            m.value, m.key, m.topic, m.partition, m.offset, state, cfg, contracts, emitted_ns=0
        )
        state.update(result.state_writes)
        total.add(result.output)
    return total, state, total.consensus
