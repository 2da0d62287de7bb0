"""Alpha Vantage: parser on recorded bodies and fuzz; client and backfill against the emulator."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from emulators.alpha_vantage import AlphaVantageEmulator, price_at
from mdstream.ingest.alpha_vantage import (
    AlphaVantageClient,
    AlphaVantageQuotePoller,
    AlphaVantageSource,
    DailyLimitReached,
    SourceUnavailable,
)
from mdstream.ingest.breaker import BreakerConfig, BreakerState, RedisBreaker
from mdstream.ingest.ratelimit import LimitSpec, Rate, TokenBucketLimiter
from mdstream.providers.alpha_vantage import parse_body

INTRADAY = json.dumps(
    {
        "Meta Data": {
            "1. Information": "Intraday (5min) open, high, low, close prices and volume",
            "2. Symbol": "IBM",
            "3. Last Refreshed": "2024-01-02 09:35:00",
            "4. Interval": "5min",
            "5. Output Size": "Compact",
            "6. Time Zone": "US/Eastern",
        },
        "Time Series (5min)": {
            "2024-07-01 09:35:00": {
                "1. open": "175.1000",
                "2. high": "175.5000",
                "3. low": "175.0000",
                "4. close": "175.2500",
                "5. volume": "1200",
            },
            "2024-01-02 09:30:00": {
                "1. open": "161.0000",
                "2. high": "161.9000",
                "3. low": "160.8000",
                "4. close": "161.5000",
                "5. volume": "35000",
            },
            "2024-01-02 09:25:00": {
                "1. open": "n/a",
                "2. high": "1",
                "3. low": "1",
                "4. close": "1",
                "5. volume": "1",
            },
        },
    }
).encode()


def test_intraday_eastern_to_utc_across_dst_and_bad_rows():
    r = parse_body(INTRADAY, "TIME_SERIES_INTRADAY", "IBM", received_ns=0)
    assert [(b.interval, b.start_ns) for b in r.bars] == [
        ("5m", int(datetime(2024, 1, 2, 14, 30, tzinfo=UTC).timestamp()) * 10**9),  # EST
        ("5m", int(datetime(2024, 7, 1, 13, 35, tzinfo=UTC).timestamp()) * 10**9),  # EDT
    ]
    assert (r.bars[0].open, r.bars[0].close, r.bars[0].volume) == (161.0, 161.5, 35000.0)
    assert len(r.errors) == 1 and "2024-01-02 09:25:00" in r.errors[0].reason


def test_daily_and_quote():
    daily = json.dumps(
        {
            "Meta Data": {"5. Time Zone": "US/Eastern"},
            "Time Series (Daily)": {
                "2024-07-01": {
                    "1. open": "1",
                    "2. high": "2",
                    "3. low": "0.5",
                    "4. close": "1.5",
                    "5. volume": "10",
                }
            },
        }
    ).encode()
    r = parse_body(daily, "TIME_SERIES_DAILY", "IBM", received_ns=0)
    assert r.bars[0].interval == "1d"
    assert r.bars[0].start_ns == int(datetime(2024, 7, 1, 4, tzinfo=UTC).timestamp()) * 10**9
    quote = json.dumps(
        {
            "Global Quote": {
                "01. symbol": "IBM",
                "05. price": "175.2300",
                "06. volume": "3000000",
                "07. latest trading day": "2024-07-01",
            }
        }
    ).encode()
    r = parse_body(quote, "GLOBAL_QUOTE", "IBM", received_ns=42)
    assert r.ticks[0].tick["price"] == 175.23 and r.ticks[0].tick["timestamp"] == 42
    empty = parse_body(b'{"Global Quote": {}}', "GLOBAL_QUOTE", "NOPE", received_ns=1)
    assert not empty.ticks and "unknown symbol" in empty.errors[0].reason


@pytest.mark.parametrize(
    ("body", "control", "errors"),
    [
        ({"Error Message": "Invalid API call."}, {"type": "error"}, 1),
        (
            {"Note": "Thank you for using Alpha Vantage! ... 5 calls per minute"},
            {"type": "rate_limited", "scope": "minute"},
            0,
        ),
        (
            {"Information": "... rate limit is 25 requests per day."},
            {"type": "rate_limited", "scope": "day"},
            0,
        ),
    ],
)
def test_http_200_error_bodies(body, control, errors):
    r = parse_body(json.dumps(body).encode(), "TIME_SERIES_DAILY", "IBM", received_ns=0)
    assert r.control and control.items() <= r.control[0].items()
    assert len(r.errors) == errors and not r.bars


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.text(max_size=20),
            lambda kids: (
                st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=20), kids, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    st.sampled_from(["TIME_SERIES_INTRADAY", "TIME_SERIES_DAILY", "GLOBAL_QUOTE", "BOGUS"]),
)
def test_parser_never_raises(raw, function):
    r = parse_body(raw, function, "IBM", received_ns=0)
    assert r.bars or r.ticks or r.errors or r.control or raw


# --- against the emulator -------------------------------------------------------------------


def unlimited() -> TokenBucketLimiter:
    return TokenBucketLimiter("alpha_vantage", LimitSpec())


async def test_rate_limit_storm_is_absorbed_and_paced():
    emu = AlphaVantageEmulator(per_minute=3, per_day=1000, window_s=0.5)
    url = await emu.start()
    try:
        async with AlphaVantageClient(
            "demo-key", base_url=url, limiter=unlimited(), note_penalty_s=0.5
        ) as client:
            results = [
                await client.query({"function": "GLOBAL_QUOTE", "symbol": "IBM"}, "IBM")
                for _ in range(8)
            ]
        assert all(len(r.ticks) == 1 for r in results)
        assert len(emu.calls) > 8  # some calls got a Note and were retried after the pause
    finally:
        await emu.stop()


async def test_documented_limiter_keeps_under_the_limit():
    """With the limiter paced to the provider's limit, no Note comes back at all."""
    emu = AlphaVantageEmulator(per_minute=4, per_day=1000, window_s=0.4)
    url = await emu.start()
    try:
        limiter = TokenBucketLimiter("alpha_vantage", LimitSpec(provider=(Rate(4, 0.4),)))
        async with AlphaVantageClient("demo-key", base_url=url, limiter=limiter) as client:
            for _ in range(10):
                await client.query({"function": "GLOBAL_QUOTE", "symbol": "AAPL"}, "AAPL")
        assert len(emu.calls) == 10
    finally:
        await emu.stop()


async def test_daily_limit_stops_and_scrubs_the_key():
    emu = AlphaVantageEmulator(api_key="s3cr3t-key", per_day=2)
    url = await emu.start()
    try:
        async with AlphaVantageClient("s3cr3t-key", base_url=url, limiter=unlimited()) as client:
            for _ in range(2):
                await client.query({"function": "GLOBAL_QUOTE", "symbol": "IBM"}, "IBM")
            with pytest.raises(DailyLimitReached) as info:
                await client.query({"function": "GLOBAL_QUOTE", "symbol": "IBM"}, "IBM")
        assert "s3cr3t-key" not in str(info.value) and "***" in str(info.value)
    finally:
        await emu.stop()


async def test_bad_key_and_symbol_are_dead_lettered_not_raised():
    emu = AlphaVantageEmulator(api_key="right")
    url = await emu.start()
    try:
        async with AlphaVantageClient("wrong", base_url=url, limiter=unlimited()) as client:
            r = await client.query({"function": "TIME_SERIES_DAILY", "symbol": "IBM"}, "IBM")
        assert not r.bars and "apikey is invalid" in r.errors[0].reason
        sink_ticks, dead = [], []

        class Sink:
            async def submit(self, tick):
                sink_ticks.append(tick)

            async def dead_letter(self, error):
                dead.append(error)

        async with AlphaVantageClient("right", base_url=url, limiter=unlimited()) as client:
            poller = AlphaVantageQuotePoller(client, ["IBM", "NOPE"], Sink())
            await poller.poll_once()
        minute = int(time.time() // 60)
        assert sink_ticks[0].symbol == "IBM"
        assert sink_ticks[0].tick["price"] in {price_at("IBM", minute), price_at("IBM", minute - 1)}
        assert len(dead) == 1 and "NOPE" in dead[0].reason
    finally:
        await emu.stop()


@pytest.mark.services
async def test_outage_opens_the_breaker(services):
    emu = AlphaVantageEmulator()
    url = await emu.start()
    redis = Redis.from_url(services.redis_url)
    try:
        breaker = RedisBreaker(
            redis,
            "alpha_vantage",
            BreakerConfig(failure_threshold=3, cooldown_s=30),
            prefix=f"t-{uuid.uuid4().hex}:",
            registry=CollectorRegistry(),
        )
        emu.fail_next(10, status=503)
        async with AlphaVantageClient(
            "demo-key",
            base_url=url,
            limiter=unlimited(),
            breaker=breaker,
            retries=5,
            backoff_s=0.01,
        ) as client:
            with pytest.raises(SourceUnavailable, match="breaker is open"):
                await client.query({"function": "GLOBAL_QUOTE", "symbol": "IBM"}, "IBM")
        assert await breaker.state() == BreakerState.OPEN
        assert len(emu.calls) == 3  # no calls once it opened
    finally:
        await redis.aclose()
        await emu.stop()


@pytest.mark.services
async def test_backfill_intraday_month_into_raw_bars(services, tmp_path):
    from mdstream.bus.kafka import decode_records, ensure_topics, read_all
    from mdstream.core.contracts import RAW_BARS, ContractSet
    from mdstream.ingest.backfill import Job, KafkaOutput, Progress, TargetTopics, run_backfill

    emu = AlphaVantageEmulator(per_minute=1000, per_day=1000)
    url = await emu.start()
    try:
        name = f"av-{uuid.uuid4().hex[:8]}"
        t = TargetTopics(f"{name}.md.raw.ticks", f"{name}.md.raw.bars", f"{name}.md.deadletter")
        ensure_topics(services.kafka_bootstrap, t.all(), 2)
        client = AlphaVantageClient("demo-key", base_url=url, limiter=unlimited())
        source = AlphaVantageSource(client)
        start, end = datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 8, tzinfo=UTC)
        job = Job("alpha_vantage", ("IBM",), start, end, "5m", url)
        summary = await run_backfill(
            source,
            job,
            KafkaOutput(services.kafka_bootstrap, t),
            Progress(tmp_path / "p.json", job, 500),
            t,
            bar_stream=None,
        )
        await client.close()
        assert summary.bars == 5 * 78  # Mon 1 .. Fri 5 July, 09:30-16:00 ET in 5-minute bars
        contracts = ContractSet.load()
        bars = [
            bar
            for _, n, v in decode_records(
                read_all(services.kafka_bootstrap, [t.bars], 1.5), contracts
            )
            if n == RAW_BARS
            for bar in v["bars"]
        ]
        assert len(bars) == 390
        first = min(bars, key=lambda b: b["start"])
        assert first["start"] == int(datetime(2024, 7, 1, 13, 30, tzinfo=UTC).timestamp()) * 10**9
        minute = first["start"] // 60_000_000_000
        assert first["open"] == price_at("IBM", minute)
        assert {c["month"] for c in emu.calls} == {"2024-06", "2024-07"}
    finally:
        await emu.stop()


async def test_http_429_retry_after_is_honoured():
    emu = AlphaVantageEmulator(per_minute=1000)
    url = await emu.start()
    try:
        emu.fail_next(1, status=429, retry_after=0.6)
        async with AlphaVantageClient("demo-key", base_url=url, limiter=unlimited()) as client:
            t0 = time.monotonic()
            r = await client.query({"function": "GLOBAL_QUOTE", "symbol": "IBM"}, "IBM")
            waited = time.monotonic() - t0
        assert len(r.ticks) == 1 and len(emu.calls) == 2
        assert waited >= 0.6  # the second call was not made before the server's Retry-After
    finally:
        await emu.stop()


@pytest.mark.services
async def test_backfill_command_against_the_emulator(services, tmp_path):
    """`mdstream backfill --provider alpha_vantage` end to end: daily bars into md.raw.bars."""
    import asyncio
    import os
    import sys

    from mdstream.bus.kafka import decode_records, read_all
    from mdstream.core.contracts import RAW_BARS, ContractSet

    emu = AlphaVantageEmulator(api_key="k3y", per_minute=1000, per_day=1000)
    url = await emu.start()
    prefix = f"avcli-{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "MDSTREAM_ALPHA_VANTAGE_URL": url,
        "ALPHA_VANTAGE_API_KEY": "k3y",
        "MDSTREAM_ALPHA_VANTAGE_PER_MINUTE": "1000",
        "MDSTREAM_TOPIC_PREFIX": prefix,
        "MDSTREAM_PARTITIONS": "2",
    }
    cmd = [
        sys.executable,
        "-m",
        "mdstream.cli",
        "backfill",
        "--provider",
        "alpha_vantage",
        "--symbols",
        "IBM,AAPL",
        "--start",
        "2024-03-01",
        "--end",
        "2024-05-01",
        "--freq",
        "1d",
        "--progress-file",
        str(tmp_path / "p.json"),
        "--no-progress-bar",
    ]
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert "k3y" not in err.decode()
    finally:
        await emu.stop()
    records = read_all(services.kafka_bootstrap, [f"{prefix}md.raw.bars"], 1.5)
    batches = [v for _, n, v in decode_records(records, ContractSet.load()) if n == RAW_BARS]
    days = {(b["instrument"]["symbol"], bar["start"]) for b in batches for bar in b["bars"]}
    from datetime import date, timedelta

    weekdays = sum(
        (date(2024, 3, 1) + timedelta(days=i)).weekday() < 5 for i in range(61)
    )  # March and April 2024 (the emulator has no holidays)
    assert len(days) == 2 * weekdays == 86
    assert {b["interval"] for b in batches} == {"1d"}
