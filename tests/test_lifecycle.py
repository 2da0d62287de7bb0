"""Retention and tiers on real PostgreSQL and s3proxy, with generated years of bars and an
injected clock; history reads across the tiers as one frame, adjusted, as of a date."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from mdstream.core.corporate_actions import CorporateAction
from mdstream.services import Endpoints
from mdstream.storage import bars as bar_store
from mdstream.storage import history
from mdstream.storage.corporate_actions import record_announcements
from mdstream.storage.lifecycle import RETENTION, WARM_AFTER, hot_partitions, plan, run_lifecycle
from mdstream.storage.objectstore import ObjectStore
from tests.pg import pg  # noqa: F401  (fixture)

NOW = datetime(2026, 6, 15, tzinfo=UTC)
SYMBOLS = ("XYZ", "ABC", "QRS")


def test_plan_drops_past_retention_and_moves_past_seven_days() -> None:
    day = timedelta(days=1)
    parts = [(f"p{i}", NOW - (i + 1) * day, NOW - i * day) for i in range(40)]
    drop, move = plan("1s", parts, NOW)
    assert set(drop) == {f"p{i}" for i in range(30, 40)}
    assert set(move) == {f"p{i}" for i in range(7, 30)}
    assert RETENTION["1d"] >= timedelta(days=3650) and timedelta(days=7) == WARM_AFTER


def _row(symbol: str, start: datetime, width: timedelta, price: float) -> tuple:
    return (symbol, start, start + width, price, price + 1, price - 1, price, 1000.0, price, 5,
            0, None, ["alpaca"])  # fmt: skip


def _generate() -> dict[str, list[tuple]]:
    """Ten-plus years of daily bars, 30 months of minute bars, 45 days of second bars."""
    rng = np.random.default_rng(1)
    rows: dict[str, list[tuple]] = {"1d": [], "1m": [], "1s": []}
    days = [d for d in (date(2014, 1, 2) + timedelta(n) for n in range(4550)) if d.weekday() < 5]
    for symbol in SYMBOLS:
        price = 100.0
        for d in days:
            if d >= NOW.date():
                break
            price *= float(np.exp(rng.normal(0, 0.01)))
            rows["1d"].append(_row(symbol, datetime(d.year, d.month, d.day, 5, tzinfo=UTC),
                                   timedelta(days=1), price))  # fmt: skip
        for n in range(1, 900, 3):
            start = (NOW - timedelta(days=n)).replace(hour=15)
            rows["1m"].append(_row(symbol, start, timedelta(minutes=1), 50.0 + n % 7))
        for n in range(1, 46):
            start = (NOW - timedelta(days=n)).replace(hour=15)
            rows["1s"].append(_row(symbol, start, timedelta(seconds=1), 20.0 + n))
    return rows


@pytest.mark.services
async def test_lifecycle_keeps_what_retention_allows_and_history_reads_across_tiers(
    pg,  # noqa: F811
    services: Endpoints,
) -> None:
    pool, schema = pg
    store = ObjectStore()
    rows = _generate()
    async with pool.acquire() as conn:
        for freq, batch in rows.items():
            await bar_store.write_bars(conn, freq, batch)
        split = CorporateAction.split(
            instrument_id="XYZ", symbol="XYZ", ex_date=date(2020, 8, 31), new=4, old=1,
            announced_at=datetime(2020, 7, 30, tzinfo=UTC),
        )  # fmt: skip
        assert (await record_announcements(conn, [split], key_prefix="xyz"))[0].applied

    def read(start: date, end: date, freq: str = "1d", **kw: object):  # type: ignore[no-untyped-def]
        return history.bars("XYZ", start, end, freq, dsn=services.postgres_dsn, schema=schema,
                            **kw)  # type: ignore[arg-type]  # fmt: skip

    keep_from = date(2016, 1, 1)  # 2014 and 2015 end before NOW - 10 y: dropped
    before = {
        "raw": read(keep_from, NOW.date()),
        "split": read(keep_from, NOW.date(), adjustment="split"),
        "as_of": read(keep_from, NOW.date(), adjustment="split", as_of=date(2020, 7, 1)),
        "1m": read(date(2024, 7, 1), NOW.date(), "1m"),
        "1s": read(NOW.date() - timedelta(days=29), NOW.date(), "1s"),
    }
    assert before["split"]["close"][0] != before["raw"]["close"][0]  # the split is applied
    assert before["as_of"]["close"].to_list() == before["raw"]["close"].to_list()  # not known

    async with pool.acquire() as conn:
        report = await run_lifecycle(conn, store, now=NOW)
        hot = {f: [p[0] for p in await hot_partitions(conn, f)] for f in ("1d", "1m", "1s")}
        tiers = await conn.fetch("SELECT freq, object_key, rows FROM bar_tiers ORDER BY 1, 2")
        deletes = await conn.fetchval(
            "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables WHERE schemaname = $1",
            schema,
        )
    assert deletes == 0  # whole partitions only
    assert sorted(n for n in report.dropped if n.startswith("bars_1d")) == [
        "bars_1d_p20140101", "bars_1d_p20150101"
    ]  # fmt: skip
    assert hot["1d"] == ["bars_1d_p20260101"]  # 2016..2025 moved to S3
    assert hot["1m"] == ["bars_1m_p20260601"]  # May ended 14 days before NOW
    assert len(hot["1s"]) == 7 and len([n for n in report.moved if "1s" in n]) == 23
    assert sum(r["rows"] for r in tiers) == report.rows_moved > 0
    assert all(store.exists(r["object_key"]) for r in tiers)

    # One frame across PostgreSQL and S3, the same as before the move, adjusted and as of.
    for name, frame in before.items():
        freq = {"1m": "1m", "1s": "1s"}.get(name, "1d")
        kw = {"raw": {}, "1m": {}, "1s": {}, "split": {"adjustment": "split"},
              "as_of": {"adjustment": "split", "as_of": date(2020, 7, 1)}}[name]  # fmt: skip
        lo = {"1m": date(2024, 7, 1), "1s": NOW.date() - timedelta(days=29)}.get(name, keep_from)
        after = read(lo, NOW.date(), freq, **kw)
        assert after.equals(frame), name
    assert read(date(2014, 1, 1), date(2015, 12, 31)).height == 0  # past retention

    async with pool.acquire() as conn:  # idempotent; a year later the 2016 object expires
        again = await run_lifecycle(conn, store, now=NOW)
        later = await run_lifecycle(conn, store, now=NOW + timedelta(days=366))
    assert (again.moved, again.dropped, again.expired) == ([], [], [])
    expired_1d = [k for k in later.expired if "bars_1d" in k]
    assert [k.rsplit("/", 1)[1] for k in expired_1d] == ["20160101.parquet"]
    assert not store.exists(expired_1d[0])


class _Crash(BaseException):
    """Stands for a kill between the object's put and the PostgreSQL commit."""


class _DiesAfterPut(ObjectStore):
    def put_new(self, key: str, body: bytes, **kw: object) -> None:  # type: ignore[override]
        super().put_new(key, body, **kw)  # type: ignore[arg-type]
        raise _Crash(key)


@pytest.mark.services
async def test_a_move_cut_short_after_the_put_keeps_the_object_and_finishes(
    pg,  # noqa: F811
    services: Endpoints,
) -> None:
    pool, schema = pg
    day = NOW - timedelta(days=10)
    rows = [_row(s, day.replace(hour=15), timedelta(seconds=1), 10.0) for s in SYMBOLS]
    async with pool.acquire() as conn:
        await bar_store.write_bars(conn, "1s", rows)
        with pytest.raises(_Crash):
            await run_lifecycle(conn, _DiesAfterPut(), now=NOW, freqs=["1s"])
        assert len(await hot_partitions(conn, "1s")) == 1  # nothing committed in PostgreSQL
        report = await run_lifecycle(conn, ObjectStore(), now=NOW, freqs=["1s"])
        assert report.rows_moved == len(rows) and await hot_partitions(conn, "1s") == []
    got = history.bars("XYZ", day.date(), day.date(), "1s", dsn=services.postgres_dsn,
                       schema=schema)  # fmt: skip
    assert got["close"].to_list() == [10.0]
