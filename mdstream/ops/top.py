"""`mdstream top`: a terminal view of mdstream's metrics, for people without Grafana.

It scrapes the processes' `/metrics` endpoints itself (no Prometheus needed), twice per refresh
interval apart, and shows per process the rates (messages, ticks, bars, dead letters, alerts),
the broker lag of each consumer group, the tick → commit p99 and the throttle level.
"""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for labels, v in samples.get(name, [])
        if all(labels.get(k) == m for k, m in match.items())
    )


def quantile(before: Samples, after: Samples, name: str, q: float) -> float | None:
    """The q-quantile of a histogram's observations between two scrapes (bucket upper bound)."""
    counts: dict[float, float] = defaultdict(float)
    for labels, v in after.get(f"{name}_bucket", []):
        counts[float(labels["le"])] += v
    for labels, v in before.get(f"{name}_bucket", []):
        counts[float(labels["le"])] -= v
    if not counts or counts[float("inf")] <= 0:
        return None
    want = q * counts[float("inf")]
    return next(le for le in sorted(counts) if counts[le] >= want)


@dataclass
class Row:
    url: str
    rates: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    p99: float | None = None
    throttle: float = 0.0
    error: str | None = None


RATES = {
    "msgs in/s": "mdstream_messages_in_total",
    "ticks in/s": "mdstream_ticks_in_total",
    "published/s": "mdstream_ingest_published_ticks_total",
    "bars/s": "mdstream_bars_total",
    "dead letters/s": "mdstream_dead_letters_total",
    "alerts/s": "mdstream_alerts_total",
}


def measure(urls: Sequence[str], interval_s: float) -> list[Row]:
    before, rows = {}, []
    for url in urls:
        try:
            before[url] = scrape(url)
        except OSError as exc:
            rows.append(Row(url, error=str(exc)))
    time.sleep(interval_s)
    for url, b in before.items():
        try:
            a = scrape(url)
        except OSError as exc:
            rows.append(Row(url, error=str(exc)))
            continue
        row = Row(url)
        for label, name in RATES.items():
            row.rates[label] = (total(a, name) - total(b, name)) / interval_s
        for labels, v in a.get("mdstream_consumer_lag", []):
            row.lag[labels["group"]] = row.lag.get(labels["group"], 0.0) + v
        row.p99 = quantile(b, a, "mdstream_tick_commit_latency_seconds", 0.99)
        row.throttle = max((v for _, v in a.get("mdstream_throttle_level", [])), default=0.0)
        rows.append(row)
    return sorted(rows, key=lambda r: r.url)


def render(rows: Iterable[Row]) -> Table:
    table = Table(title="mdstream top", expand=True)
    for col in ("process", *RATES, "lag (broker)", "tick→commit p99", "throttle"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for r in rows:
        if r.error:
            table.add_row(r.url, *["-"] * len(RATES), f"[red]{r.error}[/]", "-", "-")
            continue
        lag = ", ".join(f"{g}: {v:,.0f}" for g, v in sorted(r.lag.items())) or "-"
        p99 = f"{r.p99:.3g} s" if r.p99 is not None else "-"
        throttle = f"[yellow]{r.throttle:.0f}[/]" if r.throttle else "0"
        table.add_row(r.url, *(f"{r.rates[c]:,.1f}" for c in RATES), lag, p99, throttle)
    return table


def run(args) -> int:  # type: ignore[no-untyped-def]
    urls = [u if "/metrics" in u else f"{u.rstrip('/')}/metrics" for u in args.url]
    console = Console()
    if args.once:
        console.print(render(measure(urls, args.interval)))
        return 0
    with Live(render(measure(urls, args.interval)), console=console, screen=False) as live:
        try:
            while True:
                live.update(render(measure(urls, args.interval)))
        except KeyboardInterrupt:
            return 0


def register(subparsers) -> None:  # type: ignore[no-untyped-def]
    p = subparsers.add_parser("top", help="terminal view of the processes' metrics")
    p.add_argument(
        "--url",
        action="append",
        default=None,
        help="a process' base or /metrics URL (repeat; default: the worker on MDSTREAM_WEB_PORT)",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between the two scrapes")
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.set_defaults(func=_run_with_defaults)


def _run_with_defaults(args) -> int:  # type: ignore[no-untyped-def]
    if not args.url:
        from mdstream.settings import settings

        args.url = [f"http://{settings.web_host}:{settings.web_port}/metrics"]
    return run(args)
