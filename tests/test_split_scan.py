"""The split-like jump detector on stored real bars: AAPL's 7:1 split of 2014-06-09 becomes one
SUSPECTED_CORPORATE_ACTION alert on the alerts topic, and nothing is applied."""

from __future__ import annotations

import os
import uuid
from datetime import date, datetime, time, timedelta

import pytest

from mdstream.bus.kafka import read_all
from mdstream.cli.split_scan import scan
from mdstream.core.contracts import ContractSet
from mdstream.ingest.datasets import read_lean_daily
from mdstream.services import Endpoints
from mdstream.settings import Settings
from mdstream.storage import bars as bar_store
from tests.pg import pg  # noqa: F401  (fixture)
from tests.shared_data import shared_path
from tests.test_history import NEW_YORK

pytestmark = [pytest.mark.services, pytest.mark.realdata]


async def test_scan_alerts_on_the_2014_split_and_applies_nothing(
    pg,  # noqa: F811
    services: Endpoints,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, _ = pg
    daily = read_lean_daily(shared_path("lean", "equity", "usa", "daily", "aapl.zip"))
    rows = []
    for bar in daily.filter(
        (daily["date"] >= date(2014, 1, 1)) & (daily["date"] <= date(2014, 12, 31))
    ).iter_rows(named=True):
        start = datetime.combine(bar["date"], time(), tzinfo=NEW_YORK)
        rows.append(
            ("AAPL", start, start + timedelta(days=1), bar["open"], bar["high"], bar["low"],
             bar["close"], float(bar["volume"]), None, 0, 0, None, [])
        )  # fmt: skip
    async with pool.acquire() as conn:
        await bar_store.write_bars(conn, "1d", rows)
    prefix = f"test-scan-{uuid.uuid4().hex[:8]}."
    monkeypatch.setitem(os.environ, "MDSTREAM_TOPIC_PREFIX", prefix)
    monkeypatch.setitem(os.environ, "MDSTREAM_BROKER", f"kafka://{services.kafka_bootstrap}")
    settings = Settings.from_env()

    alerts = await scan(pool, settings, ["AAPL"], date(2014, 1, 1), date(2014, 12, 31))

    assert [(a["alert_type"], a["instrument"]) for a in alerts] == [
        ("SUSPECTED_CORPORATE_ACTION", "AAPL")
    ]
    assert "2014-06-09" in alerts[0]["description"] and alerts[0]["metrics"]["reference"] == 7
    contracts = ContractSet.load()
    topics = settings.topics
    published = [
        (r.topic, contracts.decode(r.value)[1])
        for r in read_all(services.kafka_bootstrap, [topics.alerts, topics.alerts + ".medium"])
    ]
    assert {t for t, _ in published} == {topics.alerts, topics.alerts + ".medium"}
    assert all(a == alerts[0] for _, a in published)
    assert await pool.fetchval("SELECT count(*) FROM adjustment_factors") == 0  # a suspicion only
