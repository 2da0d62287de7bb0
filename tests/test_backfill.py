"""Backfill into the real Kafka: interrupted mid-chunk, resumed, re-run; nothing lost or doubled."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from mdstream.bus.kafka import decode_records, ensure_topics, read_all
from mdstream.core.contracts import DEAD_LETTER, RAW_BARS, RAW_BATCH, ContractSet
from mdstream.ingest.backfill import (
    BackfillInterrupted,
    Job,
    KafkaOutput,
    Progress,
    TargetTopics,
    run_backfill,
    source_key,
)
from mdstream.ingest.files import DatabentoFileSource, TableFileSource
from mdstream.providers.tabular import ColumnMap
from tests.shared_data import shared_path

pytestmark = pytest.mark.services

START = datetime(2024, 7, 1, 13, 30, tzinfo=UTC)
CONTRACTS = ContractSet.load()


def tick_file(tmp_path, fmt: str) -> tuple[list, pl.DataFrame]:
    """Three symbols over 3 hours of trades and quotes, with two bad rows."""
    rng = np.random.default_rng(3)
    n = 3000
    ts = START.timestamp() * 1e9 + np.sort(rng.uniform(0, 3 * 3600e9, n))
    frame = pl.DataFrame(
        {
            "sym": rng.choice(["AAPL", "MSFT", "NVDA"], n),
            "ts_ns": ts.astype(np.int64),
            "px": np.round(rng.uniform(100, 200, n), 2).astype(str),
            "qty": rng.integers(1, 500, n),
            "seq": np.arange(n),
        }
    )
    frame = frame.with_columns(
        pl.when(pl.col("seq") == 17).then(pl.lit("n/a")).otherwise(pl.col("px")).alias("px"),
        pl.when(pl.col("seq") == 2500).then(None).otherwise(pl.col("sym")).alias("sym"),
    )
    path = tmp_path / f"ticks.{fmt}"
    if fmt == "csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return [path], frame


def topics(services, name: str) -> TargetTopics:
    t = TargetTopics(f"{name}.md.raw.ticks", f"{name}.md.raw.bars", f"{name}.md.deadletter")
    ensure_topics(services.kafka_bootstrap, t.all(), 2)
    return t


def read_back(services, t: TargetTopics):
    out: dict[str, list] = {RAW_BATCH: [], RAW_BARS: [], DEAD_LETTER: []}
    records = read_all(services.kafka_bootstrap, t.all(), idle_s=1.5)
    for _, name, value in decode_records(records, CONTRACTS):
        out[name].append(value)
    return out, len(records)


class Crash(Exception):
    pass


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_interrupted_backfill_resumes_without_loss_or_duplicates(services, tmp_path, fmt):
    paths, frame = tick_file(tmp_path, fmt)
    name = f"bf-{uuid.uuid4().hex[:8]}"
    t = topics(services, name)
    job = Job(
        "csvfile",
        ("AAPL", "MSFT", "NVDA"),
        START,
        START + timedelta(hours=3),
        "tick",
        source_key(paths),
    )
    cols = "symbol=sym,timestamp=ts_ns,price=px,volume=qty,sequence=seq"

    def source():
        return TableFileSource(
            paths, provider="csvfile", columns=ColumnMap.parse(cols), max_span=timedelta(hours=1)
        )

    progress_file = tmp_path / "progress.json"
    output = KafkaOutput(services.kafka_bootstrap, t)

    # Crash in the middle of the 5th chunk (MSFT's 2nd hour), after some of its batches went out.
    def crash(chunk, sent):
        if chunk.symbol == "MSFT" and chunk.start == START + timedelta(hours=1) and sent == 5:
            raise Crash("injected")

    with pytest.raises(BackfillInterrupted) as info:
        await run_backfill(
            source(),
            job,
            output,
            Progress(progress_file, job, 40),
            t,
            after_send=crash,
            flush_every=2,
            bar_stream=None,
        )
    first = info.value.summary
    assert first.interrupted and "injected" in first.interrupted
    partial, _ = read_back(services, t)
    assert 0 < sum(len(b["ticks"]) for b in partial[RAW_BATCH]) < 2998

    second = await run_backfill(
        source(),
        job,
        KafkaOutput(services.kafka_bootstrap, t),
        Progress(progress_file, job, 999),
        t,
        bar_stream=None,
    )
    assert second.skipped_done == 4 and second.resumed == 1
    assert second.already_published >= 4  # the crashed chunk's delivered batches were not re-sent

    got, n_messages = read_back(services, t)
    batches = got[RAW_BATCH]
    ids = [b["batchId"] for b in batches]
    assert len(ids) == len(set(ids)), "a batch was published twice"
    published = Counter(
        (b["instrument"]["symbol"], tk["timestamp"], tk["price"], tk["volume"], tk["sequence"])
        for b in batches
        for tk in b["ticks"]
    )
    good = frame.filter((pl.col("seq") != 17) & (pl.col("seq") != 2500))
    expected = Counter(
        (r["sym"], r["ts_ns"], float(r["px"]), float(r["qty"]), r["seq"])
        for r in good.iter_rows(named=True)
    )
    assert published == expected  # every good row exactly once
    assert all(len(b["ticks"]) <= 40 for b in batches)  # the batch size the job started with
    reasons = sorted(d["reason"] for d in got[DEAD_LETTER])
    assert reasons == ["missing symbol", "non-numeric price"]
    assert all(d["stage"] == "backfill" for d in got[DEAD_LETTER])

    # Re-running a finished job publishes nothing.
    third = await run_backfill(
        source(),
        job,
        KafkaOutput(services.kafka_bootstrap, t),
        Progress(progress_file, job, 40),
        t,
        bar_stream=None,
    )
    assert third.messages == 0 and third.skipped_done == third.chunks
    assert read_back(services, t)[1] == n_messages


@pytest.mark.realdata
async def test_databento_bars_and_trades(services, tmp_path):
    ohlcv = shared_path("databento", "futures_ohlcv-1m_2024-07-01T23-40_2024-07-02T00-10.dbn.zst")
    trades = shared_path("databento", "futures_trades_2024-07-01T23-58_2024-07-02T00-02.dbn.zst")
    name = f"bf-{uuid.uuid4().hex[:8]}"
    t = topics(services, name)
    start = datetime(2024, 7, 1, 23, 0, tzinfo=UTC)
    end = datetime(2024, 7, 2, 1, 0, tzinfo=UTC)
    src = DatabentoFileSource([ohlcv, trades], max_span=timedelta(minutes=20))
    out = KafkaOutput(services.kafka_bootstrap, t)
    bars_job = Job("databento", ("ESU4", "NQU4"), start, end, "1m", source_key([ohlcv, trades]))
    s1 = await run_backfill(
        src, bars_job, out, Progress(tmp_path / "b.json", bars_job, 500), t, bar_stream=None
    )
    tick_job = Job("databento", ("ESU4",), start, end, "tick", source_key([ohlcv, trades]))
    s2 = await run_backfill(
        src, tick_job, out, Progress(tmp_path / "t.json", tick_job, 500), t, bar_stream=None
    )
    assert (s1.bars, s2.ticks) == (60, 120)
    got, _ = read_back(services, t)
    bars = {
        (b["instrument"]["symbol"], bar["start"]): bar for b in got[RAW_BARS] for bar in b["bars"]
    }
    assert len(bars) == 60
    # Databento's own bars equal the 1-minute aggregation of its trades (CATALOG.md).
    trades_by_minute: dict[int, list] = {}
    for b in got[RAW_BATCH]:
        for tk in b["ticks"]:
            trades_by_minute.setdefault(tk["timestamp"] // 60_000_000_000, []).append(tk)
    assert len(trades_by_minute) == 4
    for minute, ticks in trades_by_minute.items():
        ticks.sort(key=lambda tk: (tk["timestamp"], tk["sequence"]))
        bar = bars[("ESU4", minute * 60_000_000_000)]
        prices = [tk["price"] for tk in ticks]
        assert (bar["open"], bar["high"], bar["low"], bar["close"]) == (
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
        )
        assert bar["volume"] == sum(tk["volume"] for tk in ticks)


async def test_cli_killed_mid_run_resumes(services, tmp_path):
    """`mdstream backfill` SIGKILLed mid-run, then run again twice: all rows once, then nothing."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(11)
    n = 20_000
    frame = pl.DataFrame(
        {
            "symbol": rng.choice(["AAPL", "MSFT"], n),
            "timestamp": (START.timestamp() * 1e9 + np.sort(rng.uniform(0, 7200e9, n))).astype(
                np.int64
            ),
            "price": np.round(rng.uniform(100, 200, n), 2),
            "volume": rng.integers(1, 500, n).astype(float),
        }
    )
    path = tmp_path / "ticks.parquet"
    frame.write_parquet(path)
    name = f"bf-{uuid.uuid4().hex[:8]}"
    t = topics(services, name)
    progress_file = tmp_path / "progress.json"
    cmd = [
        sys.executable,
        "-m",
        "mdstream.cli",
        "backfill",
        "--provider",
        "file",
        "--files",
        str(path),
        "--symbols",
        "AAPL,MSFT",
        "--start",
        START.isoformat(),
        "--end",
        (START + timedelta(hours=2)).isoformat(),
        "--max-span",
        "1m",
        "--batch-size",
        "20",
        "--progress-file",
        str(progress_file),
        "--ticks-topic",
        t.ticks,
        "--bars-topic",
        t.bars,
        "--dead-letter-topic",
        t.dead_letter,
    ]
    env = {**os.environ, "MDSTREAM_PARTITIONS": "2"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            chunks = json.loads(progress_file.read_text())["chunks"]
        except (FileNotFoundError, json.JSONDecodeError):
            chunks = {}
        if sum(c["state"] == "done" for c in chunks.values()) >= 30:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "already done" in done.stderr
    got, n_messages = read_back(services, t)
    ids = [b["batchId"] for b in got[RAW_BATCH]]
    assert len(ids) == len(set(ids))
    published = Counter(
        (b["instrument"]["symbol"], tk["timestamp"], tk["price"])
        for b in got[RAW_BATCH]
        for tk in b["ticks"]
    )
    assert published == Counter(
        (r["symbol"], r["timestamp"], r["price"]) for r in frame.iter_rows(named=True)
    )
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "published 0 messages" in again.stderr
    assert read_back(services, t)[1] == n_messages


def test_progress_file_of_another_job_is_refused(tmp_path):
    a = Job("file", ("AAPL",), START, START + timedelta(hours=1), "tick", "x")
    b = Job("file", ("MSFT",), START, START + timedelta(hours=1), "tick", "x")
    Progress(tmp_path / "p.json", a, 10).set("c", state="done", offsets={})
    assert Progress(tmp_path / "p.json", a, 99).batch_size == 10  # resumed jobs keep their size
    with pytest.raises(ValueError, match="another job"):
        Progress(tmp_path / "p.json", b, 10)
