"""`mdstream quality …` (measure, train, sla) and `mdstream lineage <eventId>`: the edges of the
quality framework that read files or Kafka and print."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path("../shared/data")


def _settings() -> Any:
    from mdstream.settings import settings

    return settings


def _data(args: argparse.Namespace, *parts: str) -> Path:
    import os

    root = Path(args.data or os.environ.get("MDSTREAM_SHARED_DATA", SHARED))
    path = root.joinpath(*parts)
    if not path.exists():
        sys.exit(f"real data not available: {path} (see ../shared/data/CATALOG.md)")
    return path


def _spy_days(args: argparse.Namespace) -> list[tuple[date, Path]]:
    folder = _data(args, "lean", "equity", "usa", "tick", "spy")
    return [
        (datetime.strptime(p.name[:8], "%Y%m%d").date(), p)
        for p in sorted(folder.glob("*_trade.zip"))
    ]


def measure_spy(args: argparse.Namespace) -> None:
    from mdstream.core.config import PipelineConfig
    from mdstream.core.quality.measure import suspicious_flag_agreement
    from mdstream.ingest.datasets import read_lean_trade_ticks

    cfg = PipelineConfig()
    print("day         ticks    suspicious flagged (in session) TP  precision recall")
    for day, path in _spy_days(args):
        r = suspicious_flag_agreement(read_lean_trade_ticks(path, day), cfg)
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(
            f"{day}  {r['ticks']:>7} {r['suspicious']:>6} {r['flagged']:>9} "
            f"({r['flagged_in_session']:>4}) {r['true_positives']:>6}  {precision:>9} {recall:>6}"
        )


def measure_aapl(args: argparse.Namespace) -> None:
    import polars as pl

    from mdstream.core.config import PipelineConfig
    from mdstream.core.quality.measure import daily_close_consensus, daily_config
    from mdstream.ingest.datasets import read_lean_daily, read_quandl_archive, read_yahoo_csv

    yahoo = read_yahoo_csv(_data(args, "yahoo", "AAPL.csv"))
    lo, hi = yahoo["date"].min(), yahoo["date"].max()
    lean = read_lean_daily(_data(args, "lean", "equity", "usa", "daily", "aapl.zip"))
    quandl = read_quandl_archive(_data(args, "zipline", "QUANDL_ARCHIVE.zip"), ["AAPL"])
    closes = {
        "lean": lean.filter(pl.col("date").is_between(lo, hi)).select("date", "close"),
        "quandl": quandl.filter(pl.col("date").is_between(lo, hi)).select("date", "close"),
        "yahoo": yahoo.select("date", "close"),
    }
    days = daily_close_consensus(closes, daily_config(PipelineConfig(), list(closes)))
    print(f"{len(days)} days {lo}..{hi}, providers {list(closes)}")
    for p in closes:
        dev = days[f"{p}_dev_bp"]
        print(f"  {p:7} off the day's median on {(dev > 0.5).sum():>3} days (> 0.5 bp), "
              f"max {dev.max():.2f} bp")  # fmt: skip
    flagged = days.filter(pl.any_horizontal(pl.col(f"{p}_flags") != "" for p in closes))
    print("flagged:")
    for row in flagged.iter_rows(named=True):
        what = ", ".join(f"{p} {row[p]} {row[f'{p}_flags']}" for p in closes if row[f"{p}_flags"])
        print(f"  {row['date']}: {what}; consensus {row['consensus']}")
    print("days the providers disagree (consensus IQR > 0.5 bp):")
    for row in days.filter(pl.col("iqr_bp") > 0.5).iter_rows(named=True):
        print(f"  {row['date']}: " + ", ".join(f"{p} {row[p]}" for p in closes)
              + f" → consensus {row['consensus']} (IQR {row['iqr_bp']:.2f} bp)")  # fmt: skip


def measure_sim(args: argparse.Namespace) -> None:
    from mdstream.core.config import PipelineConfig
    from mdstream.core.quality.measure import simulated_faults

    result = simulated_faults(args.seconds, PipelineConfig())
    for k, v in result.items():
        print(f"{k:34} {dict(v) if hasattr(v, 'items') else v}")


def train(args: argparse.Namespace) -> None:
    from mdstream.core.quality.model import features, save
    from mdstream.core.quality.model import train as fit

    rows, window = [], {}
    if args.lean_ticks:
        from mdstream.ingest.datasets import read_lean_trade_ticks

        days = _spy_days(args)
        for day, path in days:
            t = read_lean_trade_ticks(path, day).sort("ts", maintain_order=True)
            rows.append(features(t["ts"].to_numpy(), t["price"].to_numpy(), t["size"].to_numpy()))
        window = {"source": "lean SPY trade ticks", "days": [str(d) for d, _ in days]}
    else:
        from mdstream.core.simulate import FeedSpec, generate

        feed = FeedSpec(duration_s=args.simulated_seconds, bad_tick_rate=0.0, seed=args.seed)
        by_feed: dict[tuple[str, str], list[Any]] = {}
        for m in generate(feed):
            if isinstance(m.value, dict):
                key = (m.value["source"], m.value["instrument"]["symbol"])
                by_feed.setdefault(key, []).extend(m.value["ticks"])
        for ticks in by_feed.values():
            ts = np.array([t["timestamp"] for t in ticks])
            rows.append(features(ts, np.array([t["price"] for t in ticks]),
                                 np.array([t["volume"] for t in ticks])))  # fmt: skip
        window = {"source": "generated feed", "seconds": args.simulated_seconds,
                  "seed": args.seed, "start_ns": feed.start_ns}  # fmt: skip
    model = fit(np.concatenate(rows), group=args.group, window=window, n_estimators=args.trees,
                contamination=args.contamination)  # fmt: skip
    path = save(model, Path(args.out))
    print(json.dumps({"path": str(path), **model.meta}, indent=2, default=str))


def sla(args: argparse.Namespace) -> None:
    from mdstream.bus.kafka import read_all
    from mdstream.core.quality.reliability import sla_by_provider

    s = _settings()
    topic = f"{s.app_id}-pipeline-state-changelog"
    latest: dict[str, Any] = {}
    for rec in read_all(s.bootstrap, [topic], idle_s=args.idle):
        key = json.loads(rec.key)
        if rec.value is None:
            latest.pop(key, None)
        elif not key.startswith("\x00"):
            latest[key] = json.loads(rec.value)
    q = s.pipeline.quality
    table = sla_by_provider(latest, q.latency_good_ns / 1e6, q.latency_bad_ns / 1e6)
    print("provider    instruments  uptime   error rate  latency ms  agreement  reliability")
    for name, f in table.items():
        print(
            f"{name:11} {f['instruments']:>11}  {f['uptime']:7.2%}  {f['error_rate']:10.3%}  "
            f"{f['latency_ms']:10.1f}  {f['agreement']:9.2%}  {f['reliability']:11.3f}"
        )


def lineage(args: argparse.Namespace) -> None:
    from mdstream.bus.kafka import read_all
    from mdstream.bus.registry import contract_ids
    from mdstream.core.contracts import ContractSet
    from mdstream.core.processor import RawMessage
    from mdstream.core.quality.lineage import trace

    s = _settings()
    contracts = ContractSet.load(contract_ids(s))
    bar = None
    for rec in read_all(s.bootstrap, [s.topics.normalized], idle_s=args.idle):
        _, value = contracts.decode(rec.value)
        if value["eventId"] == args.event_id:
            bar = value
    if bar is None:
        sys.exit(f"no bar {args.event_id} on {s.topics.normalized}")
    raw = [
        RawMessage(r.value, r.key, r.topic, r.partition, r.offset)
        for r in read_all(s.bootstrap, [s.topics.raw], idle_s=args.idle)
        if r.partition == bar["lineage"]["raw_partition"]
    ]
    result = trace(bar, raw, s.pipeline, contracts)
    if not args.all_events:
        result["events"] = [e for e in result["events"] if e["entered_bar"] or e["flags"]]
    print(json.dumps(result, indent=2, default=str))


def register(subparsers: argparse._SubParsersAction) -> None:
    quality = subparsers.add_parser("quality", help="data-quality measurements, model, SLA")
    sub = quality.add_subparsers(dest="quality_command", required=True)

    measure = sub.add_parser("measure", help="print quality figures measured on data")
    measure.add_argument("what", choices=("spy", "aapl", "sim"))
    measure.add_argument("--data", help="the shared data folder (default ../shared/data)")
    measure.add_argument("--seconds", type=float, default=300.0, help="sim: feed length")
    measure.set_defaults(
        func=lambda a: {"spy": measure_spy, "aapl": measure_aapl, "sim": measure_sim}[a.what](a)
    )

    tr = sub.add_parser("train", help="train and save a versioned isolation-forest model")
    tr.add_argument("--group", required=True, help="instrument group the model is for")
    tr.add_argument("--lean-ticks", action="store_true", help="train on the Lean SPY ticks")
    tr.add_argument("--data", help="the shared data folder (default ../shared/data)")
    tr.add_argument("--simulated-seconds", type=float, default=300.0)
    tr.add_argument("--seed", type=int, default=7)
    tr.add_argument("--trees", type=int, default=50)
    tr.add_argument("--contamination", type=float, default=0.001)
    tr.add_argument("--out", default=str(Path(".run") / "models"), help="model directory")
    tr.set_defaults(func=train)

    sl = sub.add_parser("sla", help="per-provider SLA figures from the pipeline-state table")
    sl.add_argument("--idle", type=float, default=2.0, help="seconds without news = the end")
    sl.set_defaults(func=sla)

    lin = subparsers.add_parser("lineage", help="the raw events behind a normalized bar")
    lin.add_argument("event_id")
    lin.add_argument("--all-events", action="store_true", help="also unflagged ticks left out")
    lin.add_argument("--idle", type=float, default=2.0)
    lin.set_defaults(func=lineage)
