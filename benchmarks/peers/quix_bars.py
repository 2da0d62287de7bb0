"""Peer "Quix Streams": the same bars as a Quix Streams 3.x Application.

    python -m benchmarks.peers.quix_bars    (in an environment with quixstreams, see below)

What it does, and nothing else: a StreamingDataFrame on the raw topic (`PEER_SOURCE`) under
Quix's `processing_guarantee="exactly-once"` (Kafka transactions, commit every
MDSTREAM_COMMIT_INTERVAL s); one stateful `apply` per message decodes the `RawMarketDataBatch`
with `ContractSet.decode` (undecodable messages give nothing), folds its ticks one at a time into
the instrument's 1 s and 1 min OHLCV windows with the very function the faust peer uses
(`benchmarks.peers.bars.add_ticks`), keeps that state in Quix's per-key RocksDB state
(changelogged), and `expand`s the final bars into JSON messages to `PEER_SINK`, keyed by symbol.
Quix's own windowing is not used: its window closing rules differ, and the point is the same work.

quixstreams 3.28 requires confluent-kafka < 2.13 while mdstream pins 2.16, so it cannot share
mdstream's environment: it runs under an interpreter of its own
(`benchmarks/peers/requirements-quix.txt`), with the repository on PYTHONPATH for the contracts
(fastavro and numpy) and `bars`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from quixstreams import Application, State

from benchmarks.peers.bars import add_ticks, new_state
from mdstream.core.contracts import ContractSet, DecodeError

ENV = os.environ
GRACE_NS = int(float(ENV.get("MDSTREAM_GRACE_MS", "1000")) * 1_000_000)
CONTRACTS = ContractSet.load()


def bars(value: bytes, state: State) -> list[dict[str, Any]]:
    """One raw message → the bars it closed; the instrument's windows live in `state`."""
    try:
        _, batch = CONTRACTS.decode(value, "RawMarketDataBatch")
    except DecodeError:
        return []
    symbol = batch["instrument"]["symbol"]
    windows = state.get("windows") or new_state()
    out = add_ticks(windows, symbol, batch["ticks"], GRACE_NS)
    state.set("windows", windows)
    return out


def main() -> None:
    app = Application(
        broker_address=ENV["MDSTREAM_BROKER"].removeprefix("kafka://"),
        consumer_group=ENV["MDSTREAM_APP_ID"],
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=float(ENV.get("MDSTREAM_COMMIT_INTERVAL", "0.2")),
        state_dir=Path(ENV["MDSTREAM_DATA_DIR"]) / "quix-state",
        loglevel="INFO",
    )
    source = app.topic(ENV["PEER_SOURCE"], key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(ENV["PEER_SINK"], key_serializer="bytes", value_serializer="json")
    app.dataframe(source).apply(bars, stateful=True, expand=True).to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
