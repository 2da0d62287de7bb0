"""Quality benchmark: validation throughput and per-batch validation latency (the spec's NFR:
P99 validation latency < 100 ms), in process, no Kafka.

    python -m benchmarks.quality [--seconds N] [--rate-scale X ...] [--model PATH]

The generated feed (faults included) is replayed through `process_batch`; the hard rules
(`mdstream.core.validation.validate`, levels 1-2) and the quality step (`assess_batch`: semantic,
cross-source, temporal, statistical checks, scores, alerts, reliability) are timed per batch
with `perf_counter_ns`, and the whole step alongside for scale. The first 5 % of batches are a
warm-up and not counted. A script that prints numbers, not a test: the machine is shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mdstream.core import processor
from mdstream.core.config import PipelineConfig
from mdstream.core.processor import process_batch
from mdstream.core.quality import assess
from mdstream.core.simulate import FeedSpec, generate


def _timed(fn: Callable[..., Any], sink: list[int], step: list[int]) -> Callable[..., Any]:
    """`fn`, its durations appended to `sink` and added to the current step's `step[0]`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.perf_counter_ns() - t0
            sink.append(took)
            step[0] += took

    return wrapper


def run(seconds: float, rate_scale: float, model: str | None) -> dict[str, Any]:
    cfg = PipelineConfig()
    if model:
        cfg = dataclasses.replace(
            cfg, quality=dataclasses.replace(cfg.quality, models=(("*", model),))
        )
    batches = [
        m.value
        for m in generate(FeedSpec(duration_s=seconds, rate_scale=rate_scale))
        if isinstance(m.value, dict)
    ]
    validate_ns: list[int] = []
    assess_ns: list[int] = []
    step_ns: list[int] = []
    per_batch_ns: list[int] = []
    current = [0]
    real_validate, real_assess = processor.validate, assess.assess_batch
    processor.validate = _timed(real_validate, validate_ns, current)
    assess.assess_batch = _timed(real_assess, assess_ns, current)
    state: dict[str, Any] = {}
    gc.collect()
    try:
        for b in batches:
            current[0] = 0
            t0 = time.perf_counter_ns()
            process_batch(b, state, 0, cfg, emitted_ns=0)
            step_ns.append(time.perf_counter_ns() - t0)
            per_batch_ns.append(current[0])
    finally:
        processor.validate, assess.assess_batch = real_validate, real_assess
    ticks = np.array([len(b["ticks"]) for b in batches])
    skip = len(batches) // 20
    validation = np.array(validate_ns[skip:], dtype=np.float64)
    quality = np.array(assess_ns[skip:], dtype=np.float64)
    per_batch = np.array(per_batch_ns[skip:], dtype=np.float64)
    step = np.array(step_ns[skip:], dtype=np.float64)
    counted_ticks = int(ticks[skip:].sum())
    both = per_batch.sum()
    return {
        "batches": len(batches) - skip,
        "ticks": counted_ticks,
        "ticks_per_batch": counted_ticks / (len(batches) - skip),
        "validation_ticks_per_s": counted_ticks / (both / 1e9),
        "validation_batches_per_s": (len(batches) - skip) / (both / 1e9),
        "validation_p50_ms": np.percentile(per_batch, 50) / 1e6,
        "validation_p99_ms": np.percentile(per_batch, 99) / 1e6,
        "validation_max_ms": per_batch.max() / 1e6,
        "validate_p50_ms": np.percentile(validation, 50) / 1e6,
        "validate_p99_ms": np.percentile(validation, 99) / 1e6,
        "assess_p50_ms": np.percentile(quality, 50) / 1e6,
        "assess_p99_ms": np.percentile(quality, 99) / 1e6,
        "step_p50_ms": np.percentile(step, 50) / 1e6,
        "step_p99_ms": np.percentile(step, 99) / 1e6,
        "step_batches_per_s": len(step) / (step.sum() / 1e9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="feed length (default 30)")
    parser.add_argument("--rate-scale", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--model", help="an isolation-forest model (mdstream quality train)")
    args = parser.parse_args()
    for scale in args.rate_scale:
        r = run(args.seconds, scale, args.model)
        print(
            f"rate ×{scale:g}: {r['batches']} batches, {r['ticks']} ticks "
            f"({r['ticks_per_batch']:.1f}/batch), model {'on' if args.model else 'off'}"
        )
        print(
            f"  validation (validate + assess_batch): {r['validation_ticks_per_s']:,.0f} ticks/s, "
            f"{r['validation_batches_per_s']:,.0f} batches/s"
        )
        print(
            f"  validation latency per batch, ms: p50 {r['validation_p50_ms']:.3f}"
            f" p99 {r['validation_p99_ms']:.3f} max {r['validation_max_ms']:.2f}"
            f" (validate p99 {r['validate_p99_ms']:.3f}, assess_batch p99"
            f" {r['assess_p99_ms']:.3f})"
        )
        print(
            f"  whole step (+ bars, staleness, gaps): p50 {r['step_p50_ms']:.3f}"
            f" p99 {r['step_p99_ms']:.3f} ms, {r['step_batches_per_s']:,.0f} batches/s"
        )


if __name__ == "__main__":
    main()
