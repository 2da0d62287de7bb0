"""Where the mirror puts each record in Pulsar (pure)."""

from __future__ import annotations

from mdstream.core.contracts import ALERT, CONSENSUS, CORPORATE_ACTION, NORMALIZED
from mdstream.distribution.routes import DEAD_LETTER_TOPIC, producer_name, route
from tests.distribution_support import T0, alert, bar, consensus
from tests.test_contracts import RECORDS


def test_bars_go_to_normalized_by_timeframe_and_instrument_with_event_time() -> None:
    r = route(NORMALIZED, bar("BRK/B", T0, 1.0, interval="1m", revision=2))
    assert r.topic == "persistent://market-data/normalized/1m.BRK_B"  # '/' cannot be in a name
    assert (r.key, r.event_time_ms) == ("BRK/B", T0 // 1_000_000)
    assert r.properties["revision"] == "2" and r.properties["event_time_ns"] == str(T0)


def test_consensus_goes_to_real_time_by_exchange() -> None:
    r = route(CONSENSUS, consensus("AAPL", 1.0, T0), lambda symbol, at: "XNAS")
    assert r.topic == "persistent://market-data/real-time/XNAS.AAPL"
    assert route(CONSENSUS, consensus("ZZZ", 1.0, T0)).topic.endswith("/UNKNOWN.ZZZ")


def test_alerts_by_severity_corporate_actions_by_instrument_rest_to_dead_letters() -> None:
    a = route(ALERT, alert("MSFT", "CRITICAL", T0))
    assert a.topic == "persistent://market-data/data-quality/alerts.critical" and a.key == "MSFT"
    ca = route(CORPORATE_ACTION, RECORDS[CORPORATE_ACTION])
    symbol = RECORDS[CORPORATE_ACTION]["instrument"]["symbol"]
    assert ca.topic == f"persistent://market-data/corporate-actions/{symbol}"
    assert route(None, None).topic == DEAD_LETTER_TOPIC


def test_producer_names_are_stable_per_kafka_partition() -> None:
    assert producer_name("md.normalized.bars", 3) == producer_name("md.normalized.bars", 3)
    assert producer_name("md.normalized.bars", 3) != producer_name("md.normalized.bars", 2)
