"""The quality framework measured on data: real trade ticks against the vendor's suspicious flag,
three real providers through the consensus, and the generated feed's injected faults.

Pure replays through `process_batch` (no Kafka); the data comes in as frames, read by
`mdstream.ingest.datasets`. `mdstream quality measure ...` prints these figures; tests assert the
robust ones.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import polars as pl

from mdstream.core.config import PipelineConfig
from mdstream.core.processor import StepOutput, process_batch
from mdstream.core.quality.calendar import sessions
from mdstream.core.quality.checks import Check
from mdstream.providers.fields import trade

S = 1_000_000_000
DAY = 86_400 * S
_NS = uuid.UUID("0b6f5d0e-6c1b-4f7e-9a51-2d1f1f7a9c33")
OUTLIER = int(Check.CROSS_SOURCE_OUTLIER | Check.STATISTICAL_OUTLIER)


def trade_batches(
    symbol: str,
    source: str,
    ts: np.ndarray,
    price: np.ndarray,
    size: np.ndarray,
    *,
    batch_ns: int = S,
    exchange: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Time-ordered trades as RawMarketDataBatch records, one per `batch_ns` of event time,
    published at the end of their interval; batch ids are stable (uuid5 of source, symbol, start).
    """
    if not len(ts):
        return
    slot = ts // batch_ns
    cuts = np.flatnonzero(np.diff(slot)) + 1
    for idx in np.split(np.arange(len(ts)), cuts):
        start = int(slot[idx[0]]) * batch_ns
        yield {
            "batchId": str(uuid.uuid5(_NS, f"{source}|{symbol}|{start}")),
            "timestamp": start + batch_ns,
            "source": source,
            "instrument": {"symbol": symbol, "exchange": exchange, "isin": None},
            "ticks": [trade(int(ts[i]), float(price[i]), float(size[i])) for i in idx],
        }


def replay(batches: Sequence[Mapping[str, Any]] | Iterator[Mapping[str, Any]],
           cfg: PipelineConfig) -> tuple[StepOutput, list[str]]:  # fmt: skip
    """All batches through one partition's step; also returns the batch ids in order."""
    state: dict[str, Any] = {}
    total, order = StepOutput(), []
    for b in batches:
        total.add(process_batch(b, state, 0, cfg, emitted_ns=0))
        order.append(b["batchId"])
    return total, order


def tick_flags(out: StepOutput, order: Sequence[str]) -> np.ndarray:
    """The Check bits of every tick, in batch order."""
    return np.concatenate([np.asarray(out.tick_quality[b]["flags"], dtype=np.int64) for b in order])


# --------------------------------------------------------------------------------------------
# SPY ticks vs the vendor's suspicious flag


def suspicious_flag_agreement(
    ticks: pl.DataFrame, cfg: PipelineConfig, symbol: str = "SPY"
) -> dict[str, Any]:
    """Our outlier checks (cross-source, here the feed's own last price; rolling median/MAD) vs
    the vendor's `suspicious` column of one day of trade ticks (`read_lean_trade_ticks`)."""
    ticks = ticks.sort("ts", maintain_order=True)
    ts = ticks.get_column("ts").to_numpy()
    out, order = replay(
        trade_batches(symbol, "lean", ts, ticks.get_column("price").to_numpy(),
                      ticks.get_column("size").to_numpy()),
        cfg,
    )  # fmt: skip
    flags = tick_flags(out, order)
    ours = (flags & OUTLIER) != 0
    theirs = ticks.get_column("suspicious").to_numpy()
    in_session = sessions(cfg.quality.calendar).session_index(ts) >= 0
    tp = int((ours & theirs).sum())
    return {
        "ticks": len(ts),
        "suspicious": int(theirs.sum()),
        "flagged": int(ours.sum()),
        "flagged_in_session": int((ours & in_session).sum()),
        "true_positives": tp,
        "precision": tp / int(ours.sum()) if ours.any() else None,
        "recall": tp / int(theirs.sum()) if theirs.any() else None,
        "model_flagged": int(((flags & int(Check.MODEL_ANOMALY)) != 0).sum()),
        "alerts": Counter((a["alert_type"], a["status"]) for a in out.alerts),
        "missed": ticks.filter(pl.Series(theirs & ~ours)).head(5).to_dicts(),
    }


# --------------------------------------------------------------------------------------------
# three providers of daily closes through the consensus


def daily_close_consensus(
    closes: Mapping[str, pl.DataFrame], cfg: PipelineConfig, symbol: str = "AAPL"
) -> pl.DataFrame:
    """Each provider's daily close (`date`, `close`) as a trade at that session's close, in the
    order given, through the step. One row per day: each provider's close, its deviation (bp)
    from the median of all the day's closes, the flags and alerts it got, and the consensus
    after the day with its interquartile range."""
    cal = sessions(cfg.quality.calendar)
    days = sorted(set().union(*(set(f.get_column("date").to_list()) for f in closes.values())))
    by_provider = {p: dict(zip(f["date"].to_list(), f["close"].to_list(), strict=True))
                   for p, f in closes.items()}  # fmt: skip
    state: dict[str, Any] = {}
    rows = []
    for day in days:
        at = _session_close(cal, day)
        today = {p: series[day] for p, series in by_provider.items() if day in series}
        row: dict[str, Any] = {"date": day}
        for i, (provider, close) in enumerate(today.items()):
            b = {
                "batchId": str(uuid.uuid5(_NS, f"{provider}|{symbol}|{day}")),
                "timestamp": at + S,
                "source": provider,
                "instrument": {"symbol": symbol, "exchange": None, "isin": None},
                "ticks": [trade(at + i, float(close), 1.0)],
            }
            out = process_batch(b, state, 0, cfg, emitted_ns=0)
            (flags,) = out.tick_quality[b["batchId"]]["flags"]
            row[provider] = close
            row[f"{provider}_dev_bp"] = (
                abs(close / float(np.median(list(today.values()))) - 1) * 1e4
            )
            row[f"{provider}_flags"] = ",".join(c.name for c in Check if flags & c and c.name)
            row[f"{provider}_alerts"] = ",".join(
                f"{a['alert_type']}:{a['status']}" for a in out.alerts if a["source"] == provider
            )
            if symbol in out.consensus:
                c = out.consensus[symbol]
                row.update(consensus=c["price"], iqr_bp=(c["p75"] - c["p25"]) / c["price"] * 1e4,
                           voters=c["providers"])  # fmt: skip
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def _session_close(cal: Any, day: date) -> int:
    noon = int(np.datetime64(day, "ns").astype(np.int64)) + DAY // 2 + 4 * 3600 * S
    idx = int(cal.session_index(np.array([noon]))[0])
    return int(cal.closes[idx]) - S if idx >= 0 else noon


def daily_config(cfg: PipelineConfig, providers: Sequence[str]) -> PipelineConfig:
    """Daily data: a feed is stale after a week without a close; the first provider of a day is
    compared with the others' closes of the day before, so the outlier threshold is a daily
    move (10 %; earnings days move 8 %), not a tick's 2 %; the rolling median/MAD needs 20 days;
    a level holding two days is a level shift; activity checks mean nothing at a print a day."""
    return dataclasses.replace(
        cfg,
        outlier_rel=0.10,
        expected_interval_ns={p: 4 * DAY for p in providers},
        quality=dataclasses.replace(
            cfg.quality,
            level_shift_after=2,
            min_gap_ns=30 * DAY,
            # 20 days of every provider's closes: the MAD of fewer daily moves is not robust.
            mad_window=20 * len(providers),
            mad_min_history=20 * len(providers),
        ),
    )


# --------------------------------------------------------------------------------------------
# the generated feed


def simulated_faults(seconds: float, cfg: PipelineConfig, *, seed: int = 7) -> dict[str, Any]:
    """A faulty generated feed and the same feed without faults: what was caught, what was
    raised on clean data."""
    from mdstream.core.simulate import PROVIDERS, FeedSpec, generate

    def run(feed: FeedSpec) -> tuple[StepOutput, list[Any], int]:
        messages = [m for m in generate(feed) if isinstance(m.value, dict)]
        out, _ = replay((m.value for m in messages), cfg)
        return out, messages, sum(m.n_ticks for m in messages)

    faulty = FeedSpec(duration_s=seconds, seed=seed, bad_tick_rate=0.002)
    clean = dataclasses.replace(
        faulty, bad_tick_rate=0.0, garbage_message_rate=0.0,
        providers=tuple(dataclasses.replace(p, outage=None) for p in PROVIDERS),
    )  # fmt: skip
    out, messages, ticks = run(faulty)
    bad = _injected(messages)
    caught = {
        (b, i)
        for b, q in out.tick_quality.items()
        for i, f in enumerate(q["flags"])
        if f & int(Check.CROSS_SOURCE_OUTLIER | Check.STATISTICAL_OUTLIER)
    }
    rejected = {(b, i) for b, q in out.tick_quality.items() for i, s in enumerate(q["scores"])
                if s == 0.0}  # fmt: skip
    clean_out, clean_messages, clean_ticks = run(clean)
    hours = seconds / 3600 * len(faulty.instruments) * len(faulty.providers)
    return {
        "faulty_ticks": ticks,
        "fat_fingers": len(bad["fat"]),
        "fat_fingers_caught": len(bad["fat"] & caught),
        "clean_ticks_flagged_as_outliers": len(caught - bad["fat"]),
        "bad_ticks": len(bad["invalid"]),
        "bad_ticks_rejected": len(bad["invalid"] & rejected),
        "outages": len(bad["outages"]),
        "outages_alerted": len(bad["outages"] & _stale_raised(out)),
        "faulty_alerts": Counter((a["alert_type"], a["status"]) for a in out.alerts),
        "clean_ticks": clean_ticks,
        "clean_batches": len(clean_messages),
        "clean_alerts": len(clean_out.alerts),
        "clean_alerts_per_feed_hour": len(clean_out.alerts) / hours,
        "clean_min_bar_quality": min(b["quality_metrics"]["quality_score"] for b in clean_out.bars),
    }


def _stale_raised(out: StepOutput) -> set[tuple[str, str]]:
    return {(a["instrument"], a["source"]) for a in out.alerts
            if a["alert_type"] == "STALE_DATA" and a["status"] == "RAISED"}  # fmt: skip


def _injected(messages: Sequence[Any]) -> dict[str, set[Any]]:
    """The generator's faults. From its output: invalid ticks (sentinel price, zero size) and
    fat fingers (more than 10 % from the median of every provider's trades of the instrument
    within ±0.5 s). From its spec: outages longer than 5 s, per instrument and provider."""
    from mdstream.core.simulate import PROVIDERS

    rows = [
        (m.value["instrument"]["symbol"], t["timestamp"], t["price"], t["volume"],
         m.value["batchId"], i, m.value["source"])
        for m in messages
        for i, t in enumerate(m.value["ticks"])
    ]  # fmt: skip
    invalid = {(r[4], r[5]) for r in rows if r[2] <= 0 or r[3] <= 0}
    fat = set()
    for symbol in {r[0] for r in rows}:
        mine = sorted((r for r in rows if r[0] == symbol and r[2] > 0 and r[3] > 0),
                      key=lambda r: r[1])  # fmt: skip
        ts = np.array([r[1] for r in mine])
        px = np.array([r[2] for r in mine])
        lo, hi = np.searchsorted(ts, ts - S // 2), np.searchsorted(ts, ts + S // 2)
        for k, r in enumerate(mine):
            if abs(r[2] / float(np.median(px[lo[k] : hi[k]])) - 1) > 0.1:
                fat.add((r[4], r[5]))
    outages = {(r[0], p.name) for r in rows for p in PROVIDERS if p.outage and p.outage[1] -
               p.outage[0] > 5}  # fmt: skip
    return {"invalid": invalid, "fat": fat, "outages": outages}
