"""One batch through the quality levels 2-5: flags, exclusions, scores, alerts, reliability.

`assess_batch` is called by `mdstream.core.processor.process_batch` on the ticks that passed the
hard rules and are not late; it reads and updates the instrument's state (plain JSON-able dicts):

- ``providers[name]``: ``price``, ``ts``, ``stale`` (consensus and staleness), plus ``q`` (the
  feed's quality memory: last event time and sequence number, the day's spreads, running score,
  a level shift in progress) and ``rel`` (reliability accumulators);
- ``hist``: the instrument's last accepted trade prices, for the rolling median/MAD check;
- ``conditions``: raised alert conditions (`mdstream.core.quality.alerts`);
- ``windows``: per open bar window and provider, sums of the tick scores and the lineage of the
  ticks that went into it, read when the bar closes (`bar_quality`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mdstream.core.batch import TickColumns, stable_id, tick_event_id
from mdstream.core.consensus import Consensus, build_consensus
from mdstream.core.quality import alerts as alertlib
from mdstream.core.quality import checks, reliability
from mdstream.core.quality import score as scorelib
from mdstream.core.quality.calendar import sessions
from mdstream.core.quality.checks import Check
from mdstream.core.quality.config import QualityConfig
from mdstream.core.quality.model import load_model
from mdstream.core.quality.reliability import compact

if TYPE_CHECKING:
    from mdstream.core.config import PipelineConfig

DAY_NS = 86_400_000_000_000
_MS = 1e6

#: Checks run on every accepted tick; a bar's lineage lists those its ticks all passed.
CHECKS_RUN = (
    "syntactic", "semantic", "cross_source", "temporal", "statistical_mad",
)  # fmt: skip

# windows[key][provider] = [ticks, accuracy, timeliness, completeness, consistency, flags OR,
#                           batches, first raw offset, last raw offset, raw partition]
N, ACC, TIME, COMP, CONS, FLAGS, BATCHES, FIRST, LAST, PART = range(10)


@dataclass
class Assessment:
    bar_trades: np.ndarray  # trades that may enter bars and the feed's price
    flags: np.ndarray  # Check bits per tick
    scores: np.ndarray  # quality score per tick (0 where not usable)
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _new_feed() -> dict[str, Any]:
    return {"last_ts": 0, "seq": None, "spreads": [], "day": -1, "ewma": 1.0, "n": 0}


def _weights(providers: Mapping[str, Any], qcfg: QualityConfig) -> dict[str, float]:
    good, bad = qcfg.latency_good_ns / _MS, qcfg.latency_bad_ns / _MS
    return {name: reliability.weight(p.get("rel"), good, bad) for name, p in providers.items()}


def fresh_consensus(
    providers: Mapping[str, Any],
    qcfg: QualityConfig,
    as_of: int,
    exclude: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> Consensus | None:
    """Reliability-weighted median of the fresh providers' last prices (one left out)."""
    weights = _weights(providers, qcfg) if weights is None else weights
    fresh = [
        (name, p["price"], weights[name])
        for name, p in providers.items()
        if name != exclude and not p.get("stale") and p.get("price")
    ]
    if not fresh:
        return None
    return build_consensus(
        [p for _, p, _ in fresh], [w for _, _, w in fresh], as_of, [n for n, _, _ in fresh]
    )


def record_rejections(inst: dict[str, Any], provider: str, rejected: int) -> None:
    """A batch with nothing usable still counts against its provider's error rate."""
    me = inst["providers"].setdefault(provider, {"price": None, "ts": 0, "stale": False})
    rel = me.setdefault("rel", reliability.new())
    reliability.observe_ticks(rel, rejected, rejected, 0.0, 0.0, 0)


def _ewma(start: float, values: np.ndarray, alpha: float) -> float:
    m = len(values)
    if not m:
        return start
    decay = (1 - alpha) ** np.arange(m - 1, -1, -1)
    return float((1 - alpha) ** m * start + alpha * np.dot(decay, values))


def assess_batch(
    cols: TickColumns,
    ok: np.ndarray,
    inst: dict[str, Any],
    cfg: PipelineConfig,
    *,
    rejected: int = 0,
    partition: int | None = None,
    offset: int | None = None,
) -> Assessment:
    """Levels 2-5 on the usable ticks (`ok`) of one batch; updates the instrument's state.

    Written for batches of a few ticks: each check is skipped when the batch cannot fail it
    (no quotes, no sequence numbers, no conditions, all inside one session).
    """
    qcfg = cfg.quality
    symbol, provider = cols.symbol, cols.source
    n = len(cols)
    providers: dict[str, Any] = inst["providers"]
    conditions: dict[str, Any] = inst.setdefault("conditions", {})
    now = int(cols.ts[ok].max())
    me = providers.setdefault(provider, {"price": None, "ts": 0, "stale": False})
    feed = me.setdefault("q", _new_feed())
    rel = me.setdefault("rel", reliability.new())
    weights = _weights(providers, qcfg)
    out: list[dict[str, Any]] = []
    flags = np.zeros(n, dtype=np.int64)
    none = np.zeros(n, dtype=bool)
    trade = ok & cols.is_trade
    quote = ok & ~cols.is_trade
    any_quote = bool(quote.any())

    # Level 2, semantic.
    conds = cols.conditions
    nonreg = trade & checks.non_regular(conds, qcfg.non_regular_conditions) if conds else none
    lock = wide = none
    if any_quote:
        spread = cols.ask - cols.bid
        if feed["day"] != now // DAY_NS:
            feed["day"], feed["spreads"] = now // DAY_NS, []
        typical = float(np.median(feed["spreads"])) if len(feed["spreads"]) >= 20 else None
        wide = quote & checks.wide_spread(spread, typical, qcfg.wide_spread_factor)
        lock = quote & checks.locked(cols.bid, cols.ask)
        usable = spread[quote & ~wide & (spread > 0)]
        if len(usable):
            feed["spreads"] = (feed["spreads"] + usable.tolist())[-qcfg.spread_memory :]

    # Level 4, temporal.
    ts_ok = cols.ts if ok.all() else np.where(ok, cols.ts, np.iinfo(np.int64).min)
    ooo = ok & checks.out_of_order(ts_ok, feed["last_ts"])
    seqs = cols.sequence
    dup = gap = none
    missing = 0
    if np.isfinite(seqs).any():
        dup, gap, missing = checks.sequences(np.where(ok, seqs, np.nan), feed["seq"])
    cal = sessions(qcfg.calendar)
    if cal.same_session(int(cols.ts[ok].min()), now):
        outside = none
    else:
        outside = ok & (cal.session_index(cols.ts) < 0)

    # Level 3, cross-source: against the other fresh providers, else the feed's own last price.
    others = fresh_consensus(providers, qcfg, now, exclude=provider, weights=weights)
    reference = others.price if others is not None else me.get("price")
    value = (
        np.where(cols.is_trade, cols.price, (cols.bid + cols.ask) / 2)
        if any_quote
        else (cols.price)
    )
    deviation = checks.relative_deviation(value, reference)
    candidates = trade & ~nonreg & ~dup
    with np.errstate(invalid="ignore"):
        cross = candidates & (deviation > cfg.outlier_rel)

    # Level 5, statistical: rolling median/MAD over the instrument's last accepted trades (all
    # providers: they report the same tape); a move the other providers also saw (their
    # consensus within k MADs of the tick) is not an outlier.
    stat, median, mad = checks.mad_outliers(
        inst.setdefault("hist", []), cols.price, k=qcfg.mad_k, floor_rel=qcfg.mad_floor_rel,
        min_history=qcfg.mad_min_history,
    )  # fmt: skip
    stat &= candidates & ~cross
    if others is not None and stat.any():
        stat &= ~(np.abs(cols.price - others.price) <= qcfg.mad_k * mad)
    anomalous = none
    model_path = qcfg.model_for(inst["instrument"].get("instrument_type"))
    if model_path and candidates.any():
        idx = np.flatnonzero(candidates)
        anomalous = none.copy()
        anomalous[idx] = load_model(model_path).flag(
            cols.ts[idx], cols.price[idx], cols.volume[idx], feed["last_ts"], me.get("price")
        )

    offending = cross | stat
    shifted = none
    if offending.any() or feed.get("shift"):
        before = offending.copy()
        seen_elsewhere = [
            p["q"]["shift"][0]
            for name, p in providers.items()
            if name != provider and p.get("q", {}).get("shift") and not p.get("stale")
        ]
        if _level_shifts(cols, candidates, offending, feed, seen_elsewhere, cfg):
            inst["hist"] = []
        shifted = before & ~offending
        cross &= offending
        stat &= offending
    for mask, check in (
        (lock, Check.LOCKED_QUOTE), (wide, Check.WIDE_SPREAD), (nonreg, Check.NON_REGULAR),
        (cross, Check.CROSS_SOURCE_OUTLIER), (ooo, Check.OUT_OF_ORDER), (dup, Check.DUPLICATE),
        (gap, Check.SEQUENCE_GAP), (outside, Check.OUTSIDE_SESSION),
        (stat, Check.STATISTICAL_OUTLIER), (anomalous, Check.MODEL_ANOMALY),
        (shifted, Check.LEVEL_SHIFT),
    ):  # fmt: skip
        if mask is not none:
            flags[mask] |= int(check)
    any_offence = bool(offending.any())
    bar_trades = (
        trade & ~(offending | nonreg | dup)
        if any_offence or nonreg is not none or (dup is not none)
        else trade
    )

    # Alerts: outliers (one condition per feed), sequence gaps.
    if any_offence or conditions:
        out += _outlier_alerts(cols, conditions, offending, cross, bar_trades, deviation,
                               median, reference, cfg, qcfg)  # fmt: skip
    if gap is not none and gap.any():
        first = int(np.flatnonzero(gap)[0])
        raised = alertlib.raise_once(
            conditions, "MISSING_DATA", "MEDIUM", provider, symbol,
            f"{missing} message(s) missing from {provider} for {symbol} (sequence gaps)",
            int(cols.ts[first]), tick_event_id(cols.batch_id, first), observed=float(missing),
        )  # fmt: skip
        if raised:
            out.append(raised)
        after = int(ok[int(np.flatnonzero(gap)[-1]) :].sum())
        alertlib.count_clean(conditions, "MISSING_DATA", provider, after, reset=True)
    elif alertlib.is_raised(conditions, "MISSING_DATA", provider):
        clean = alertlib.count_clean(conditions, "MISSING_DATA", provider, int(ok.sum()), False)
        if clean >= qcfg.clear_after_clean:
            cleared = alertlib.clear(
                conditions,
                "MISSING_DATA",
                provider,
                symbol,
                f"{provider} delivers {symbol} without gaps again",
                now,
            )
            out.append(cleared)  # type: ignore[arg-type]

    # Scores.
    known = len(providers)
    fresh = sum(1 for name, p in providers.items() if name == provider or not p.get("stale"))
    completeness = scorelib.completeness(fresh, known, int(ok.sum()), missing)
    accuracy = scorelib.accuracy(deviation, cfg.outlier_rel)
    if any_offence:
        accuracy[offending] = 0.0
    latency = cols.published_ns - cols.ts
    timeliness = scorelib.timeliness(latency, qcfg.latency_good_ns, qcfg.latency_bad_ns)
    everyone = fresh_consensus(providers, qcfg, now, weights=weights)
    consistency = scorelib.consistency(everyone, cfg.outlier_rel)
    scores = scorelib.combine(completeness, accuracy, timeliness, consistency)
    if not ok.all():
        scores = np.where(ok, scores, 0.0)

    # Running feed score → QUALITY_DEGRADED (with hysteresis).
    feed["ewma"] = compact(_ewma(feed["ewma"], scores, qcfg.score_alpha))
    feed["n"] += n
    out += _score_alerts(feed, conditions, provider, symbol, now, qcfg)

    # Reliability, then the feed's memory.
    judged = candidates & np.isfinite(deviation)
    # The time since this provider's last report was up, unless it has been stale.
    reliability.observe_time(rel, now, not me.get("stale"), qcfg.reliability_half_life_ns)
    reliability.observe_ticks(
        rel, n, rejected + int(offending.sum()), float(latency[ok].sum() / _MS),
        float(accuracy[judged].sum()), int(judged.sum()),
    )  # fmt: skip
    feed["last_ts"] = max(feed["last_ts"], now)
    if dup is not none:
        top = int(np.nanmax(np.where(ok, seqs, np.nan)))
        feed["seq"] = top if feed["seq"] is None else max(feed["seq"], top)
    if bar_trades.any():
        inst["hist"] = (inst["hist"] + cols.price[bar_trades].tolist())[-qcfg.mad_window :]

    _add_to_windows(inst, cols, bar_trades, flags, accuracy, timeliness, completeness,
                    consistency, cfg, partition, offset)  # fmt: skip
    return Assessment(bar_trades, flags, scores, out)


def _level_shifts(
    cols: TickColumns,
    candidates: np.ndarray,
    offending: np.ndarray,
    feed: dict[str, Any],
    seen_elsewhere: Sequence[float],
    cfg: PipelineConfig,
) -> bool:
    """A fat finger is a lone print; a real level shift (a split's ex-date on a raw feed, a
    crash) persists, and other providers see it too. After `level_shift_after` consecutive
    offending trades within the outlier threshold of each other, or at once when another fresh
    provider's own run of outliers sits at the same level, the feed's new level is accepted
    (un-flagged in `offending`), and the instrument's price history must restart there (returns
    True). Without this, a feed that moved for good would be excluded for ever."""
    shift = feed.get("shift")  # [anchor price, consecutive offending trades near it]
    accepted = False
    for i in np.flatnonzero(candidates):
        price = float(cols.price[i])
        if not offending[i]:
            shift = None
            continue
        if shift is not None and abs(price / shift[0] - 1) <= cfg.outlier_rel:
            shift[1] += 1
        else:
            shift = [price, 1]
        confirmed = any(abs(price / seen - 1) <= cfg.outlier_rel for seen in seen_elsewhere)
        if shift[1] >= cfg.quality.level_shift_after or confirmed:
            offending[i] = False
            accepted = True
    feed["shift"] = shift
    return accepted


def _outlier_alerts(
    cols: TickColumns,
    conditions: dict[str, Any],
    offending: np.ndarray,
    cross: np.ndarray,
    clean_trades: np.ndarray,
    deviation: np.ndarray,
    median: float,
    reference: float | None,
    cfg: PipelineConfig,
    qcfg: QualityConfig,
) -> list[dict[str, Any]]:
    provider, symbol = cols.source, cols.symbol
    if offending.any():
        i = int(np.flatnonzero(offending)[0])
        price = float(cols.price[i])
        if cross[i]:
            ref, dev, how = float(reference), float(deviation[i]), "the reference"  # type: ignore[arg-type]
        else:
            ref = median
            dev, how = abs(price - ref) / ref, f"its rolling median ({qcfg.mad_k:g} MADs)"
        severity = "HIGH" if dev > 5 * cfg.outlier_rel else "MEDIUM"
        raised = alertlib.raise_once(
            conditions, "OUTLIER_DETECTED", severity, provider, symbol,
            f"{provider} trade at {price:.6g} is {dev:.2%} from {how} {ref:.6g}; "
            "excluded from bars",
            int(cols.ts[i]), tick_event_id(cols.batch_id, i), observed=price, reference=ref,
        )  # fmt: skip
        last = int(np.flatnonzero(offending)[-1])
        alertlib.count_clean(conditions, "OUTLIER_DETECTED", provider,
                             int(clean_trades[last:].sum()), reset=True)  # fmt: skip
        return [raised] if raised else []
    if not alertlib.is_raised(conditions, "OUTLIER_DETECTED", provider):
        return []
    clean = alertlib.count_clean(conditions, "OUTLIER_DETECTED", provider,
                                 int(clean_trades.sum()), reset=False)  # fmt: skip
    if clean < qcfg.clear_after_clean:
        return []
    cleared = alertlib.clear(
        conditions, "OUTLIER_DETECTED", provider, symbol,
        f"{provider} has sent {clean} trades in line for {symbol}",
        int(cols.ts[clean_trades].max()),
    )  # fmt: skip
    return [cleared] if cleared else []


def _score_alerts(
    feed: dict[str, Any],
    conditions: dict[str, Any],
    provider: str,
    symbol: str,
    now: int,
    qcfg: QualityConfig,
) -> list[dict[str, Any]]:
    score = feed["ewma"]
    if feed["n"] < qcfg.score_min_ticks:
        return []
    if score < qcfg.score_alert_below:
        raised = alertlib.raise_once(
            conditions, "QUALITY_DEGRADED", "HIGH" if score < 0.5 else "MEDIUM", provider,
            symbol, f"{provider} quality score for {symbol} fell to {score:.2f}", now,
            f"{now}", quality_score=score, observed=score, reference=qcfg.score_alert_below,
        )  # fmt: skip
        return [raised] if raised else []
    if score >= qcfg.score_alert_below + qcfg.score_hysteresis:
        cleared = alertlib.clear(
            conditions, "QUALITY_DEGRADED", provider, symbol,
            f"{provider} quality score for {symbol} recovered to {score:.2f}", now,
            quality_score=score,
        )  # fmt: skip
        return [cleared] if cleared else []
    return []


def _add_to_windows(
    inst: dict[str, Any],
    cols: TickColumns,
    used: np.ndarray,
    flags: np.ndarray,
    accuracy: np.ndarray,
    timeliness: np.ndarray,
    completeness: float,
    consistency: float,
    cfg: PipelineConfig,
    partition: int | None,
    offset: int | None,
) -> None:
    if not used.any():
        return
    windows = inst.setdefault("windows", {})
    ts, acc, tim, fl = cols.ts[used], accuracy[used], timeliness[used], flags[used]
    lo, hi = int(ts.min()), int(ts.max())
    for label, width in cfg.interval_widths.items():
        if lo // width == hi // width:  # the usual case: the whole batch in one window
            groups = [(lo // width * width, slice(None))]
        else:
            starts = ts // width * width
            groups = [(int(ws), starts == ws) for ws in np.unique(starts)]
        for ws, sel in groups:
            k = len(ts) if isinstance(sel, slice) else int(sel.sum())
            row = windows.setdefault(f"{label}|{ws}", {}).setdefault(
                cols.source, [0, 0.0, 0.0, 0.0, 0.0, 0, 0, offset, offset, partition]
            )
            row[N] += k
            row[ACC] = compact(row[ACC] + float(acc[sel].sum()))
            row[TIME] = compact(row[TIME] + float(tim[sel].sum()))
            row[COMP] = compact(row[COMP] + completeness * k)
            row[CONS] = compact(row[CONS] + consistency * k)
            row[FLAGS] |= int(np.bitwise_or.reduce(fl[sel]))
            row[BATCHES] += 1
            if offset is not None:
                row[FIRST] = offset if row[FIRST] is None else min(row[FIRST], offset)
                row[LAST] = offset if row[LAST] is None else max(row[LAST], offset)


def bar_quality(
    inst: dict[str, Any],
    interval: str,
    window_start: int,
    source: str,
    completeness: float,
    cfg: PipelineConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(quality_metrics, lineage) of a closing bar; forgets the window and any older one.

    completeness: the share of known providers present in the window (the bar side knows it).
    """
    qcfg = cfg.quality
    windows = inst.get("windows", {})
    row = windows.pop(f"{interval}|{window_start}", {}).get(source)
    for key in [k for k in windows if k.split("|")[0] == interval]:
        if int(key.split("|")[1]) < window_start:
            del windows[key]
    rel = inst.get("providers", {}).get(source, {}).get("rel")
    source_reliability = reliability.weight(rel, qcfg.latency_good_ns / _MS,
                                            qcfg.latency_bad_ns / _MS) if rel else 1.0  # fmt: skip
    if not row or not row[N]:
        accuracy = timeliness = consistency = 1.0
        flags, lineage_rows, partition = 0, (0, 0, None, None), None
    else:
        accuracy, timeliness = row[ACC] / row[N], row[TIME] / row[N]
        completeness = completeness * row[COMP] / row[N]
        consistency = row[CONS] / row[N]
        flags, lineage_rows = row[FLAGS], (row[N], row[BATCHES], row[FIRST], row[LAST])
        partition = row[PART]
    metrics = {
        "completeness": completeness,
        "accuracy_score": accuracy,
        "timeliness_score": timeliness,
        "source_reliability": min(1.0, source_reliability),
        "consistency_score": consistency,
        "quality_score": float(scorelib.combine(completeness, accuracy, timeliness, consistency)),
    }
    seen = checks.names(flags)
    model_path = qcfg.model_for(inst["instrument"].get("instrument_type"))
    lineage = {
        "raw_partition": partition,
        "raw_offset_first": lineage_rows[2],
        "raw_offset_last": lineage_rows[3],
        "raw_batches": lineage_rows[1],
        "raw_ticks": lineage_rows[0],
        "checks_passed": [c for c in CHECKS_RUN] + (["model"] if model_path else []),
        "flags": seen,
        "quality_model": model_path,
    }
    return metrics, lineage


def staleness(
    inst: dict[str, Any], symbol: str, provider: str, now: int, cfg: PipelineConfig
) -> list[dict[str, Any]]:
    """This provider is fresh again (CLEARED if it was stale); the others are stale when silent
    on this instrument for more than `stale_factor` × their own expected interval.

    Judged on the instrument's event time, so only while another provider still updates it: an
    instrument nobody updates is MISSING_DATA (`mdstream.core.quality.activity`), not a stale feed.
    (Uptime is counted by `assess_batch` when a provider reports: a silence it was stale
    through counts as down then.)
    """
    out: list[dict[str, Any]] = []
    providers: dict[str, Any] = inst["providers"]
    conditions: dict[str, Any] = inst.setdefault("conditions", {})
    me = providers[provider]
    if me.get("stale"):
        me["stale"] = False
        cleared = alertlib.clear(
            conditions,
            "STALE_DATA",
            provider,
            symbol,
            f"{provider} is updating {symbol} again",
            now,
            last_update=now,
        )
        if cleared:
            out.append(cleared)
    for name, p in providers.items():
        expected = cfg.expected_interval(name)
        if name != provider and not p.get("stale") and now - p["ts"] > cfg.stale_factor * expected:
            p["stale"] = True
            raised = alertlib.raise_once(
                conditions, "STALE_DATA", "HIGH", name, symbol,
                f"no update from {name} for {symbol} in {(now - p['ts']) / 1e9:.1f}s "
                f"(expected every {expected / 1e9:g}s)",
                now, p["ts"], last_update=p["ts"], expected_frequency=f"{expected / 1e9:g}s",
                observed=(now - p["ts"]) / 1e9, reference=cfg.stale_factor * expected / 1e9,
            )  # fmt: skip
            if raised:
                out.append(raised)
    return out


def consensus_changes(
    inst: dict[str, Any], symbol: str, consensus: Consensus, emitted_ns: int, every_ns: int
) -> list[dict[str, Any]]:
    """A ConsensusPriceEvent when price, quartiles or voter count moved since the last one, at
    most one per `every_ns` of event time: a message per batch would cost the worker a third of
    its throughput, and the `consensus` table always holds the latest."""
    key = [consensus.price, consensus.p25, consensus.p75, consensus.providers]
    sent = inst.get("consensus_sent")
    if sent is not None and (sent[:4] == key or consensus.as_of - sent[4] < every_ns):
        return []
    inst["consensus_sent"] = [*key, consensus.as_of]
    record = consensus.to_record()
    return [
        {
            "eventId": stable_id("consensus", symbol, consensus.as_of, *key),
            "timestamp": emitted_ns,
            "instrument": symbol,
            **record,
        }
    ]
