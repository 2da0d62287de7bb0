"""What the worker's Prometheus sensor costs per raw batch (a script, not a test).

`python -m benchmarks.ops`: the sensor callbacks faust makes for one generated raw batch (message
in, stream event in with its tick count) and for its outputs (sends, with the decode of each bar),
timed in a loop, next to the processing step itself on the same batches.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from faust.types import TP

from mdstream.core.contracts import NORMALIZED, RAW_BATCH, ContractSet
from mdstream.core.simulate import FeedSpec, generate
from mdstream.ops.worker import PrometheusSensor
from mdstream.settings import Topics


def main() -> None:
    contracts = ContractSet.load()
    topics = Topics.with_prefix("bench.")
    sensor = PrometheusSensor(contracts, topics)
    msgs = [m for m in generate(FeedSpec(duration_s=20, seed=1)) if isinstance(m.value, dict)]
    raw = [contracts.encode(RAW_BATCH, m.value) for m in msgs]
    tp = TP(topics.raw, 0)
    bar = {  # one realistic bar, encoded once
        "eventId": "00000000-0000-0000-0000-000000000000",
        "timestamp": 0,
        "instrument": {"symbol": "AAPL", "exchange": "XNAS", "isin": None},
        "ohlcv": {"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0,
                  "vwap": 1.0, "trade_count": 1},
        "timestamp_utc": 0, "interval": "1s", "window_start": 0, "window_end": 1,
        "quality_metrics": {"completeness": 1.0, "accuracy_score": 1.0,
                            "timeliness_score": 1.0, "source_reliability": 1.0},
        "adjustments_applied": [], "sources": ["alpaca"],
    }  # fmt: skip
    try:
        bar_value = contracts.encode(NORMALIZED, bar)
    except Exception as exc:  # the contract may have grown required fields
        print(f"(bar send not timed: {exc})")
        bar_value = None
    start = time.perf_counter()
    for i, value in enumerate(raw):
        message = SimpleNamespace(value=value, timestamp=time.time())
        sensor.on_message_in(tp, i, message)
        sensor.on_stream_event_in(tp, i, None, SimpleNamespace(message=message))
        for topic in (f"{topics.raw}-changelog", f"{topics.raw}-changelog"):
            state = sensor.on_send_initiated(None, topic, SimpleNamespace(value=b""), 0, 0)
            sensor.on_send_completed(None, state, None)
    per_batch = (time.perf_counter() - start) / len(raw)
    print(
        f"sensor per raw batch (in + 2 changelog sends): {per_batch * 1e6:.1f} µs over {len(raw)}"
    )
    if bar_value is not None:
        n = 20_000
        start = time.perf_counter()
        for _ in range(n):
            sensor.on_send_initiated(
                None, topics.normalized, SimpleNamespace(value=bar_value), 0, 0
            )
        print(f"sensor per bar sent (decoded for interval + quality): "
              f"{(time.perf_counter() - start) / n * 1e6:.1f} µs")  # fmt: skip
    start = time.perf_counter()
    for value in raw:
        contracts.decode(value, expected=RAW_BATCH)
    print(f"of which the raw batch decode: {(time.perf_counter() - start) / len(raw) * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
