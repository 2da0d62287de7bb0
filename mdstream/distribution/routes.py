"""Where each committed Kafka record goes in Pulsar (pure: no I/O).

Layout (the spec's, under tenant `market-data`; a Pulsar topic's local name cannot hold `/`, so
the spec's path segments below the namespace are joined with `.`):

| contract | Pulsar topic | retention |
|---|---|---|
| ConsensusPriceEvent | `market-data/real-time/{exchange}.{instrument}` | 7 days |
| NormalizedMarketDataEvent | `market-data/normalized/{timeframe}.{instrument}` | 2 years |
| CorporateActionAppliedEvent | `market-data/corporate-actions/{instrument}` | 10 years |
| DataQualityAlertEvent | `market-data/data-quality/alerts.{severity}` | 30 days |
| anything else (dead letters, undecodable) | `market-data/data-quality/deadletter` | 30 days |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mdstream.core.contracts import ALERT, CONSENSUS, CORPORATE_ACTION, NORMALIZED

TENANT = "market-data"
MINUTES_PER_DAY = 24 * 60
#: namespace → retention in minutes.
NAMESPACES: dict[str, int] = {
    "real-time": 7 * MINUTES_PER_DAY,
    "normalized": 2 * 365 * MINUTES_PER_DAY,
    "corporate-actions": 10 * 365 * MINUTES_PER_DAY,
    "data-quality": 30 * MINUTES_PER_DAY,
}
DEAD_LETTER_TOPIC = f"persistent://{TENANT}/data-quality/deadletter"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=:-]")


def _name(part: str) -> str:
    """A topic-name-safe segment (Pulsar allows letters, digits and `-_=:.`)."""
    return _UNSAFE.sub("_", part) or "_"


@dataclass(frozen=True)
class Route:
    topic: str  # full Pulsar topic name
    key: str  # message key: the instrument (alerts: their instrument; corporate actions: too)
    event_time_ms: int  # Pulsar event time: the record's own time, not when it was mirrored
    properties: dict[str, str]


def route(
    contract: str | None,
    record: Mapping[str, Any] | None,
    exchange_of: Callable[[str, int], str | None] = lambda symbol, at_ns: None,
) -> Route:
    """The destination of one decoded record (`contract` None: it did not decode)."""
    if contract == NORMALIZED and record is not None:
        symbol = record["instrument"]["symbol"]
        interval = record["interval"]
        return Route(
            f"persistent://{TENANT}/normalized/{_name(interval)}.{_name(symbol)}",
            symbol,
            record["window_start"] // 1_000_000,
            {
                "contract": contract,
                "interval": interval,
                "revision": str(record["revision"]),
                "event_time_ns": str(record["window_start"]),
            },
        )
    if contract == CONSENSUS and record is not None:
        symbol = record["instrument"]
        exchange = exchange_of(symbol, record["as_of"]) or "UNKNOWN"
        return Route(
            f"persistent://{TENANT}/real-time/{_name(exchange)}.{_name(symbol)}",
            symbol,
            record["as_of"] // 1_000_000,
            {"contract": contract, "event_time_ns": str(record["as_of"])},
        )
    if contract == CORPORATE_ACTION and record is not None:
        symbol = record["instrument"]["symbol"]
        return Route(
            f"persistent://{TENANT}/corporate-actions/{_name(symbol)}",
            symbol,
            record["timestamp"] // 1_000_000,
            {"contract": contract, "event_time_ns": str(record["timestamp"])},
        )
    if contract == ALERT and record is not None:
        severity = str(record["severity"]).lower()
        return Route(
            f"persistent://{TENANT}/data-quality/alerts.{_name(severity)}",
            record["instrument"],
            record["timestamp"] // 1_000_000,
            {
                "contract": contract,
                "severity": severity,
                "alert_type": str(record["alert_type"]),
                "status": str(record["status"]),
                "event_time_ns": str(record["timestamp"]),
            },
        )
    return Route(DEAD_LETTER_TOPIC, "", 0, {"contract": contract or "undecodable"})


def producer_name(kafka_topic: str, partition: int) -> str:
    """Stable per Kafka partition: Pulsar's deduplication keys its sequence ids on it."""
    return f"mdstream-mirror.{_name(kafka_topic)}.{partition}"
