"""Prometheus metrics of the streaming ingestion edge (prometheus-client, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
BATCHES = Counter("mdstream_ingest_batches_total", "Raw batches published to Kafka", ["provider"])
PUBLISHED_TICKS = Counter(
    "mdstream_ingest_published_ticks_total", "Ticks acknowledged by Kafka", ["provider"]
)
PUBLISH_ERRORS = Counter(
    "mdstream_ingest_publish_errors_total", "Messages Kafka did not acknowledge", ["provider"]
)
DEAD_LETTERS = Counter(
    "mdstream_ingest_dead_letters_total", "Dead letters written by ingestion", ["provider"]
)
LATENCY = Histogram(
    "mdstream_ingest_latency_seconds",
    "Provider timestamp of a tick to its acknowledgement by Kafka",
    ["provider"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
)
RATE_LIMITED = Counter(
    "mdstream_ingest_rate_limited_total",
    "HTTP 429 answers from a provider",
    ["provider", "endpoint"],
)
BARS = Counter(
    "mdstream_ingest_provider_bars_total",
    "Bars computed by the provider (not published)",
    ["provider"],
)
