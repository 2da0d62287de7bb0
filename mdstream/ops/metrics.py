"""Every Prometheus metric of mdstream, in one place, with the same names in every process kind.

Ingest, the faust worker, the sinks, the mirror and the WebSocket server import their metrics from
here; a process exports only what it touches (a label set appears once it is first used). The
names are what `ops/rules/*.yml` and `ops/grafana/*.json` query: change them there too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_STAGE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
_COMMIT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

# ---- every process: Kafka consumption, production, lag ------------------------------------------
MESSAGES_IN = Counter(
    "mdstream_messages_in_total", "Kafka messages consumed", ["topic", "partition"]
)
MESSAGES_OUT = Counter("mdstream_messages_out_total", "Kafka messages produced (sent)", ["topic"])
SEND_ERRORS = Counter("mdstream_send_errors_total", "Kafka sends that failed", ["topic"])
TICKS_IN = Counter(
    "mdstream_ticks_in_total", "Raw ticks in the raw batches consumed", ["topic", "partition"]
)
CONSUMER_LAG = Gauge(
    "mdstream_consumer_lag",
    "Messages between a group's committed offset and the log end, from the broker",
    ["group", "topic", "partition"],
)
COMMITTED_OFFSET = Gauge(
    "mdstream_consumer_committed_offset",
    "A group's committed offset, from the broker",
    ["group", "topic", "partition"],
)
LOG_END_OFFSET = Gauge(
    "mdstream_log_end_offset", "A partition's log end (high watermark)", ["topic", "partition"]
)
LAG_PROBE_ERRORS = Counter(
    "mdstream_lag_probe_errors_total", "Lag probes that could not reach the broker", ["group"]
)
COMMIT_SECONDS = Histogram(
    "mdstream_commit_seconds",
    "Offset commit (under exactly-once: the Kafka transaction commit) duration",
    buckets=_COMMIT_BUCKETS,
)
COMMITS = Counter("mdstream_commits_total", "Offset commits (transaction commits under EOS)")
TRANSACTION_ABORTS = Counter(
    "mdstream_transaction_aborts_total", "Transactions aborted (the worker then restarts)"
)
TICK_COMMIT_SECONDS = Histogram(
    "mdstream_tick_commit_latency_seconds",
    "Raw message timestamp (ingest publish) → the commit of its processing",
    buckets=_LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "mdstream_stage_seconds",
    "Processing time per stage (decode, validate, quality, bars, produce)",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
REBALANCES = Counter("mdstream_rebalances_total", "Consumer group rebalances")
ASSIGNED_PARTITIONS = Gauge(
    "mdstream_assigned_partitions", "Partitions this process is assigned", ["topic"]
)
LAST_PROGRESS = Gauge(
    "mdstream_last_progress_seconds", "Unix time this process last made progress (message/commit)"
)
UP = Gauge("mdstream_process_up", "1 while the process runs; labels say which", ["kind", "name"])
READY = Gauge("mdstream_process_ready", "1 while /readyz answers 200", ["kind", "name"])

# ---- pipeline outputs ---------------------------------------------------------------------------
BARS = Counter("mdstream_bars_total", "Normalized bars emitted", ["interval"])
DEAD_LETTERS = Counter(
    "mdstream_dead_letters_total",
    "Dead letters written (ingest and worker), by stage, source (provider) and reason",
    ["stage", "source", "reason"],
)
ALERTS = Counter(
    "mdstream_alerts_total",
    "Quality alerts emitted, by type, severity and status",
    ["alert_type", "severity", "status"],
)
QUALITY_SCORE = Gauge(
    "mdstream_quality_score", "Latest quality score of an instrument's bars (0..1)", ["symbol"]
)

# ---- providers / ingest -------------------------------------------------------------------------
FRAMES = Counter(
    "mdstream_ingest_frames_total", "Websocket frames received from a provider", ["provider"]
)
TICKS = Counter(
    "mdstream_ingest_ticks_total", "Raw ticks parsed and handed to the batcher", ["provider"]
)
FRAME_ERRORS = Counter(
    "mdstream_ingest_frame_errors_total",
    "Frames or frame elements that could not be parsed (dead-lettered)",
    ["provider"],
)
RECONNECTS = Counter(
    "mdstream_ingest_reconnects_total",
    "Connection attempts after a failure",
    ["provider", "reason"],
)
CONNECTED = Gauge(
    "mdstream_ingest_connected", "1 while the provider feed is connected", ["provider"]
)
LAST_MESSAGE = Gauge(
    "mdstream_ingest_last_message_seconds", "Unix time of the last frame received", ["provider"]
)
INGEST_BATCHES = Counter(
    "mdstream_ingest_batches_total", "Raw batches published to Kafka", ["provider"]
)
PUBLISHED_TICKS = Counter(
    "mdstream_ingest_published_ticks_total", "Ticks acknowledged by Kafka", ["provider"]
)
PUBLISH_ERRORS = Counter(
    "mdstream_ingest_publish_errors_total", "Messages Kafka did not acknowledge", ["provider"]
)
INGEST_LATENCY = Histogram(
    "mdstream_ingest_latency_seconds",
    "Provider timestamp of a tick to its acknowledgement by Kafka",
    ["provider"],
    buckets=_LATENCY_BUCKETS,
)
RATE_LIMITED = Counter(
    "mdstream_ingest_rate_limited_total",
    "HTTP 429 answers from a provider",
    ["provider", "endpoint"],
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "mdstream_ingest_rate_limit_wait_seconds_total",
    "Seconds callers waited for a provider's rate limit",
    ["provider"],
)
PROVIDER_BARS = Counter(
    "mdstream_ingest_provider_bars_total",
    "Bars computed by the provider (not published)",
    ["provider"],
)
FAILOVERS = Counter(
    "mdstream_failovers_total",
    "An instrument's serving provider changed",
    ["symbol", "from_provider", "to_provider"],
)

# ---- backpressure -------------------------------------------------------------------------------
THROTTLE_LEVEL = Gauge(
    "mdstream_throttle_level",
    "Ingest throttling: 0 off, 1 coalescing quotes + wider batches, 2 also non-priority paused",
    ["provider"],
)
THROTTLE_CHANGES = Counter(
    "mdstream_throttle_changes_total", "Throttle level changes", ["provider", "level"]
)
THROTTLED_TICKS = Counter(
    "mdstream_throttled_ticks_total",
    "Ticks not published because of throttling (coalesced quotes, paused providers)",
    ["provider", "action"],
)
THROTTLE_OBSERVED_LAG = Gauge(
    "mdstream_throttle_observed_lag",
    "The workers' consumer lag the throttle controller last read",
    ["provider"],
)

# ---- storage ------------------------------------------------------------------------------------
SINK_ROWS = Counter("mdstream_sink_rows_total", "Rows written by a sink", ["sink", "table"])
SINK_REJECTED = Counter("mdstream_sink_rejected_total", "Messages a sink rejected", ["sink"])
SINK_WRITE_SECONDS = Histogram(
    "mdstream_sink_write_seconds", "One sink batch transaction", ["sink"], buckets=_COMMIT_BUCKETS
)
SINK_WRITE_ERRORS = Counter(
    "mdstream_sink_write_errors_total", "Sink batch writes that failed", ["sink"]
)
STORE_UP = Gauge("mdstream_store_up", "1 while the store answers (PostgreSQL, Redis)", ["store"])


def breaker_state(registry: CollectorRegistry = REGISTRY) -> Gauge:
    """`mdstream_breaker_state{provider}` 0 closed, 1 half-open, 2 open (once per registry)."""
    return _per_registry(
        registry,
        "mdstream_breaker_state",
        "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
        ["provider"],
    )


def failover_on_cache(registry: CollectorRegistry = REGISTRY) -> Gauge:
    """`mdstream_failover_on_cache{symbol}`: served from the last-price cache (per registry)."""
    return _per_registry(
        registry,
        "mdstream_failover_on_cache",
        "1 while an instrument is served from the last-price cache (no provider left)",
        ["symbol"],
    )


_gauges: dict[tuple[int, str], Gauge] = {}


def _per_registry(registry: CollectorRegistry, name: str, doc: str, labels: list[str]) -> Gauge:
    key = (id(registry), name)
    if key not in _gauges:
        _gauges[key] = Gauge(name, doc, labels, registry=registry)
    return _gauges[key]


class DiskCollector(Collector):
    """`mdstream_disk_free_ratio{path}` and `mdstream_disk_free_bytes{path}`, read at scrape."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = [str(p) for p in paths]

    def collect(self):  # type: ignore[no-untyped-def]
        ratio = GaugeMetricFamily(
            "mdstream_disk_free_ratio",
            "Free share of the filesystem holding a data dir",
            labels=["path"],
        )
        free = GaugeMetricFamily(
            "mdstream_disk_free_bytes",
            "Free bytes of the filesystem holding a data dir",
            labels=["path"],
        )
        for path in self.paths:
            try:
                usage = shutil.disk_usage(path)
            except OSError:
                continue
            ratio.add_metric([path], usage.free / usage.total if usage.total else 0.0)
            free.add_metric([path], usage.free)
        yield ratio
        yield free


_disk_paths: set[str] = set()


def watch_disk(path: Path, registry: CollectorRegistry = REGISTRY) -> None:
    """Export the free space of `path`'s filesystem (once per path and process)."""
    key = str(path)
    if key in _disk_paths:
        return
    path.mkdir(parents=True, exist_ok=True)
    _disk_paths.add(key)
    registry.register(DiskCollector([path]))
