"""Quality history and SLA figures in PostgreSQL; a bar's lineage down to archive objects."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from mdstream.bus.kafka import ensure_topics, publish
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import ContractSet
from mdstream.core.processor import recompute
from mdstream.core.quality.lineage import trace
from mdstream.core.simulate import FeedSpec, generate
from mdstream.services import Endpoints
from mdstream.storage import history
from mdstream.storage.archive import Archiver
from mdstream.storage.objectstore import ObjectStore
from mdstream.storage.quality_history import bar_lineage, quality_row, record_quality, sla
from mdstream.storage.replay import iter_archive
from tests.pg import pg  # noqa: F401  (fixture)

CONTRACTS = ContractSet.load()
CFG = PipelineConfig()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _at(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


@pytest.mark.services
async def test_quality_history_sla_and_lineage_to_the_archive(
    pg,  # noqa: F811
    services: Endpoints,
) -> None:
    pool, schema = pg
    store = ObjectStore()
    topic = f"test-quality-{uuid.uuid4().hex[:8]}"
    ensure_topics(services.kafka_bootstrap, [topic], 2)
    publish(services.kafka_bootstrap, topic, generate(FeedSpec(duration_s=70, seed=8,
            rate_scale=0.1)), CONTRACTS)  # fmt: skip
    Archiver(services.kafka_bootstrap, [topic], store, max_messages=200).run(until_idle_s=1.5)
    out, _, _ = recompute(iter_archive(store, topic), CFG, CONTRACTS)
    events = out.bars
    for i, e in enumerate(events):  # emission times: window end + a known latency
        e["timestamp"] = e["window_end"] + (50 + (i * 37) % 400) * 1_000_000
    assert {e["interval"] for e in events} == {"1s", "1m"}

    async with pool.acquire() as conn:
        assert await record_quality(conn, events) == len(events)
        assert await record_quality(conn, events) == 0  # once per bar
        lo, hi = _at(FeedSpec().start_ns), _at(FeedSpec().start_ns + 10**12)
        figures = await sla(conn, lo, hi, interval="1s", bucket="hour")

    got = history.quality(lo, hi, instruments=["AAPL"], interval="1m", dsn=services.postgres_dsn,
                          schema=schema)  # fmt: skip
    aapl_1m = [e for e in events if e["interval"] == "1m" and e["instrument"]["symbol"] == "AAPL"]
    assert got.height == len(aapl_1m) > 0
    assert got["quality_score"].to_list() == [e["quality_metrics"]["quality_score"]
                                              for e in aapl_1m]  # fmt: skip

    # SLA figures against the same figures computed here from the events.
    one_s = [e for e in events if e["interval"] == "1s"]
    assert figures.height > 0
    for row in figures.iter_rows(named=True):
        mine = [e for e in one_s if e["instrument"]["symbol"] == row["instrument"]
                and e["sources"][0] == row["provider"]]  # fmt: skip
        windows = {
            e["window_start"] for e in one_s if e["instrument"]["symbol"] == row["instrument"]
        }
        latency = [(e["timestamp"] - e["window_end"]) / 1e6 for e in mine]
        assert row["bars"] == len(mine)
        assert row["availability"] == pytest.approx(len(mine) / len(windows))
        assert row["latency_p99_ms"] == pytest.approx(np.percentile(latency, 99))
        assert row["completeness"] == pytest.approx(
            np.mean([e["quality_metrics"]["completeness"] for e in mine])
        )
    providers = set(figures["provider"].to_list())
    assert len(providers) > 1  # the feed's outages hand windows to the backups

    # Lineage: a stored bar → the archive objects of its raw offsets → its ticks, consistent.
    bar = next(e for e in one_s if e["lineage"]["raw_batches"] > 1)
    found = await bar_lineage(pool, store, topic, quality_row(bar)[0], "1s",
                              _at(bar["window_start"]))  # fmt: skip
    assert found["objects"] and all(k.startswith(f"raw/{topic}/") for k in found["objects"])
    assert found["quality"]["event_id"] == bar["eventId"]
    traced = trace(bar, found["messages"], CFG, CONTRACTS)
    assert traced["consistent"] and traced["trades_entered"] == bar["ohlcv"]["trade_count"]
