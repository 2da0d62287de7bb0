"""DataQualityAlertEvent records, and conditions that raise once and clear once (no storms).

A condition is (alert type, provider) within an instrument's state. Raising a raised condition
emits nothing; clearing it emits one CLEARED event with the severity it was raised with, so a
consumer of one severity topic sees both ends. Ids are deterministic: (type, status, source,
instrument, the event that started the condition).
"""

from __future__ import annotations

from typing import Any

from mdstream.core.batch import stable_id

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
RAISED, CLEARED = "RAISED", "CLEARED"
#: Source of an instrument-wide condition (every provider fell silent).
ALL_SOURCES = "*"


def alert(
    alert_type: str,
    severity: str,
    status: str,
    source: str,
    symbol: str,
    description: str,
    at_ns: int,
    event_key: object,
    **metrics: Any,
) -> dict[str, Any]:
    return {
        "eventId": stable_id(alert_type, status, source, symbol, event_key),
        "timestamp": at_ns,
        "alert_type": alert_type,
        "severity": severity,
        "status": status,
        "source": source,
        "instrument": symbol,
        "description": description,
        "metrics": {
            "last_update": metrics.get("last_update"),
            "expected_frequency": metrics.get("expected_frequency"),
            "quality_score": metrics.get("quality_score"),
            "observed": metrics.get("observed"),
            "reference": metrics.get("reference"),
        },
    }


def condition_key(alert_type: str, source: str) -> str:
    return f"{alert_type}|{source}"


def raise_once(
    conditions: dict[str, Any],
    alert_type: str,
    severity: str,
    source: str,
    symbol: str,
    description: str,
    at_ns: int,
    event_key: object,
    **metrics: Any,
) -> dict[str, Any] | None:
    """RAISED for a condition not yet raised; None when it already is."""
    key = condition_key(alert_type, source)
    if key in conditions:
        return None
    conditions[key] = {"severity": severity, "since": str(event_key), "clean": 0}
    return alert(alert_type, severity, RAISED, source, symbol, description, at_ns, event_key,
                 **metrics)  # fmt: skip


def clear(
    conditions: dict[str, Any],
    alert_type: str,
    source: str,
    symbol: str,
    description: str,
    at_ns: int,
    **metrics: Any,
) -> dict[str, Any] | None:
    """CLEARED for a raised condition (with its severity); None when it is not raised."""
    state = conditions.pop(condition_key(alert_type, source), None)
    if state is None:
        return None
    return alert(alert_type, state["severity"], CLEARED, source, symbol, description, at_ns,
                 state["since"], **metrics)  # fmt: skip


def is_raised(conditions: dict[str, Any], alert_type: str, source: str) -> bool:
    return condition_key(alert_type, source) in conditions


def count_clean(
    conditions: dict[str, Any], alert_type: str, source: str, clean: int, reset: bool
) -> int:
    """Clean observations since the condition's last offence (reset: an offence just now)."""
    state = conditions.get(condition_key(alert_type, source))
    if state is None:
        return 0
    state["clean"] = clean if reset else state["clean"] + clean
    return state["clean"]


def severity_topic(alerts_topic: str, severity: str) -> str:
    """Per-severity alert topic beside the all-alerts topic: md.quality.alerts.high, ..."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    return f"{alerts_topic}.{severity.lower()}"
