"""`mdstream backfill`: historical data from a provider or files into the raw topics.

    mdstream backfill --provider file --files ticks.parquet --symbols AAPL,MSFT \\
        --start 2024-07-01 --end 2024-07-02 [--freq tick] [--columns timestamp=ts,symbol=ticker]
    mdstream backfill --provider databento --files es.dbn.zst --symbols ESU4 --start ... --end ...
    mdstream backfill --provider alpha_vantage --symbols IBM --start ... --end ... --freq 1m

Resumable and idempotent (see `mdstream.ingest.backfill`): run the same command again after an
interruption and it continues where it stopped; run it after it finished and it publishes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mdstream.ingest.backfill import (
    BackfillInterrupted,
    Job,
    KafkaOutput,
    Progress,
    TargetTopics,
    progress_path,
    run_backfill,
    source_key,
)
from mdstream.ingest.files import TICKS, DatabentoFileSource, TableFileSource
from mdstream.ingest.protocols import HistoricalSource
from mdstream.providers.tabular import ColumnMap

PROVIDERS = ("file", "databento", "alpha_vantage")


def parse_time(text: str) -> datetime:
    """ISO date or datetime; naive means UTC."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


_SPAN_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_span(text: str) -> timedelta:
    """``30s``, ``15m``, ``1h``, ``7d``."""
    try:
        span = timedelta(**{_SPAN_UNITS[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"bad span {text!r}: use <n>s/m/h/d") from None
    if span <= timedelta(0):
        raise argparse.ArgumentTypeError(f"span must be positive: {text!r}")
    return span


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backfill",
        help="load historical data into the raw topics (resumable, idempotent)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--provider", required=True, choices=PROVIDERS)
    p.add_argument("--symbols", required=True, help="comma-separated")
    p.add_argument("--start", required=True, type=parse_time, help="ISO date/time (UTC if naive)")
    p.add_argument("--end", required=True, type=parse_time, help="exclusive")
    p.add_argument(
        "--freq", default=TICKS, help="'tick' (trades/quotes) or a bar interval: 1s, 1m, 1h, 1d"
    )
    p.add_argument("--files", nargs="+", type=Path, help="input files (file, databento)")
    p.add_argument("--columns", help="column mapping ours=theirs,... (file)")
    p.add_argument("--source-name", default="file", help="source name of file records (file)")
    p.add_argument("--file-symbol", help="symbol of every row of a file with no symbol column")
    p.add_argument("--tz", default="UTC", help="zone of naive timestamps in files (file)")
    p.add_argument("--time-unit", default="ns", choices=("ns", "us", "ms", "s"))
    p.add_argument("--max-span", type=parse_span, help="chunk width, e.g. 1h (default: source's)")
    p.add_argument("--batch-size", type=int, default=500, help="records per Kafka message")
    p.add_argument("--progress-file", type=Path)
    p.add_argument("--ticks-topic", help="default: the deployment's raw ticks topic")
    p.add_argument("--bars-topic", help="default: <prefix>md.raw.bars")
    p.add_argument("--dead-letter-topic", help="default: the deployment's dead-letter topic")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=main)


def build_source(args: argparse.Namespace) -> tuple[HistoricalSource, str]:
    if args.provider in ("file", "databento") and not args.files:
        raise SystemExit(f"--provider {args.provider} needs --files")
    if args.provider == "file":
        source: HistoricalSource = TableFileSource(
            args.files,
            provider=args.source_name,
            columns=ColumnMap.parse(args.columns),
            time_unit=args.time_unit,
            tz=args.tz,
            symbol=args.file_symbol,
        )
        key = source_key(args.files)
    elif args.provider == "databento":
        source = DatabentoFileSource(args.files)
        key = source_key(args.files)
    else:
        from mdstream.ingest.alpha_vantage import AlphaVantageSource

        source = AlphaVantageSource.from_env()
        key = source_key(url=source.base_url)
    if args.max_span:
        source.max_span = args.max_span
    return source, key


def main(args: argparse.Namespace) -> int:
    from mdstream.bus.kafka import ensure_topics
    from mdstream.services.config import Settings as ServiceSettings
    from mdstream.settings import settings

    prefix = os.environ.get("MDSTREAM_TOPIC_PREFIX", "")
    topics = TargetTopics(
        args.ticks_topic or settings.topics.raw,
        args.bars_topic or f"{prefix}md.raw.bars",
        args.dead_letter_topic or settings.topics.dead_letter,
    )
    ensure_topics(settings.bootstrap, topics.all(), settings.partitions)
    source, key = build_source(args)
    symbols = tuple(s.strip() for s in args.symbols.split(",") if s.strip())
    job = Job(source.provider, symbols, args.start, args.end, args.freq, key)
    path = args.progress_file or progress_path(ServiceSettings.from_env().run_dir, job)
    progress = Progress(path, job, args.batch_size)
    output = KafkaOutput(settings.bootstrap, topics)
    try:
        summary = asyncio.run(
            run_backfill(
                source,
                job,
                output,
                progress,
                topics,
                bar_stream=None if args.no_progress_bar else sys.stderr,
            )
        )
    except BackfillInterrupted as exc:
        print(exc.summary.text(), file=sys.stderr)
        return 130 if isinstance(exc.__cause__, KeyboardInterrupt) else 1
    finally:
        output.close()
    print(summary.text(), file=sys.stderr)
    return 0
