"""Peer "faust per-event": the bars written as a plain faust-streaming app would write them.

    faust -A benchmarks.peers.faust_per_event worker -l info

What it does, and nothing else: one agent on the raw topic (`PEER_SOURCE`), under faust's own
`processing_guarantee="exactly_once"` (none of mdstream's fixes in `mdstream/bus/eos.py`); per
message it decodes the `RawMarketDataBatch` with `ContractSet.decode` (undecodable messages are
skipped), folds its ticks one at a time into the instrument's 1 s and 1 min OHLCV windows
(`benchmarks.peers.bars.add_ticks`), keeps that state as a dict in a faust Table (RocksDB via
rocksdict, changelogged: one changelog record per message), and sends each final bar as JSON to
`PEER_SINK`, keyed by symbol. No validation, quality, consensus, alerts or 1 h bars.

Configured from the environment `benchmarks.pipeline.harness.Pipeline` gives a worker
(MDSTREAM_APP_ID is the consumer group, MDSTREAM_BROKER, MDSTREAM_DATA_DIR, MDSTREAM_PARTITIONS,
MDSTREAM_GRACE_MS, MDSTREAM_COMMIT_INTERVAL) plus PEER_SOURCE and PEER_SINK.
"""

from __future__ import annotations

import json
import os

import faust

from benchmarks.peers.bars import add_ticks, new_state
from mdstream.core.contracts import ContractSet, DecodeError

ENV = os.environ
PARTITIONS = int(ENV["MDSTREAM_PARTITIONS"])
GRACE_NS = int(float(ENV.get("MDSTREAM_GRACE_MS", "1000")) * 1_000_000)
CONTRACTS = ContractSet.load()

app = faust.App(
    ENV["MDSTREAM_APP_ID"],
    broker=ENV["MDSTREAM_BROKER"],
    processing_guarantee="exactly_once",
    store="rocksdb://",  # faust runs it on rocksdict when python-rocksdb is absent
    datadir=ENV["MDSTREAM_DATA_DIR"],
    broker_commit_interval=float(ENV.get("MDSTREAM_COMMIT_INTERVAL", "0.2")),
    topic_partitions=PARTITIONS,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
)
source = app.topic(
    ENV["PEER_SOURCE"],
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
sink = app.topic(ENV["PEER_SINK"], key_serializer="raw", value_serializer="raw")
windows = app.Table("bar-state", default=None, partitions=PARTITIONS)


@app.agent(source)
async def bars(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        try:
            _, batch = CONTRACTS.decode(value, "RawMarketDataBatch")
        except DecodeError:
            continue
        symbol = batch["instrument"]["symbol"]
        state = windows.get(symbol) or new_state()
        for bar in add_ticks(state, symbol, batch["ticks"], GRACE_NS):
            await sink.send(key=symbol.encode(), value=json.dumps(bar).encode())
        windows[symbol] = state
