"""Fuzz the columnar raw batch: mutated messages through the whole processing step.

    python -m benchmarks.fuzz_columns [--batches N] [--seed S]

What a broken producer could send: columns of the wrong length, counts that lie, unknown kind
codes, NaN/inf/negative/sentinel values, timestamps out of order or absurd, sequence and
condition columns that do not fit, truncated or bit-flipped bytes. Every one must end as a
processed batch or a dead letter with a reason — never as an exception (the step's own
"process" dead letter, for a batch that made it raise, counts as a finding). It prints the
counts per outcome and mutation. tests/test_fuzz_columns.py runs a short version.
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import fastavro
import numpy as np

from mdstream.core.batch import pack_columns
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import RAW_BATCH, ContractSet
from mdstream.core.processor import handle_raw_message
from mdstream.core.simulate import FeedSpec, generate

_F8 = ("price", "volume", "bid", "ask")
_SPECIAL = (float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e308, -0.0, 999_999.0)


def _frame(contracts: ContractSet, record: Mapping[str, Any]) -> bytes:
    contract = contracts.by_name[RAW_BATCH]
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, contract.schema_id))
    fastavro.schemaless_writer(buf, contract.parsed, record)
    return buf.getvalue()


def _set_values(columns: dict[str, Any], name: str, rng: random.Random, dtype: str) -> None:
    if len(columns[name]) % 8:
        return  # already cut to a length that is no array
    values = np.frombuffer(columns[name], dtype).copy()
    if len(values):
        for _ in range(rng.randint(1, len(values))):
            i = rng.randrange(len(values))
            if dtype == "<f8":
                values[i] = rng.choice(_SPECIAL)
            else:
                values[i] = rng.choice((0, -1, 2**62, -(2**63), 10**12, 1_764_000_000 * 10**9))
    columns[name] = values.tobytes()


def _resize(columns: dict[str, Any], rng: random.Random) -> None:
    name = rng.choice(("kind", "event_ts", "provider_ts", *_F8))
    raw = columns[name]
    columns[name] = raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 else raw + b"\x00" * 3


MUTATIONS: dict[str, Callable[[dict[str, Any], random.Random], None]] = {
    "length": _resize,
    "count": lambda c, r: c.update(count=r.choice((c["count"] + 1, c["count"] - 1, -5, 0))),
    "kind": lambda c, r: c.update(kind=bytes(r.randrange(256) for _ in c["kind"])),
    "float": lambda c, r: _set_values(c, r.choice(_F8), r, "<f8"),
    "time": lambda c, r: _set_values(c, r.choice(("event_ts", "provider_ts")), r, "<i8"),
    "unsorted": lambda c, r: c.update(event_ts=bytes(reversed(c["event_ts"]))),
    "sequence": lambda c, r: c.update(sequence=r.choice((b"", b"\x01" * 8 * c["count"], None))),
    "conditions": lambda c, r: c.update(conditions=r.choice((["@"] * (c["count"] + 1), None))),
}


def mutated(
    contracts: ContractSet, batch: Mapping[str, Any], rng: random.Random
) -> tuple[list[str], bytes]:
    """(the mutations applied, the framed message): one to three mutations of `batch`'s columns,
    or, one time in ten, its encoding truncated or with bytes flipped."""
    if rng.random() < 0.1:
        data = bytearray(contracts.encode(RAW_BATCH, batch))
        if rng.random() < 0.5:
            return ["truncated"], bytes(data[: rng.randrange(5, len(data))])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(5, len(data))] = rng.randrange(256)
        return ["flipped"], bytes(data)
    record = {k: v for k, v in batch.items() if k != "ticks"}
    columns = pack_columns(batch["ticks"])
    names = rng.sample(sorted(MUTATIONS), rng.randint(1, 3))
    for name in names:
        MUTATIONS[name](columns, rng)
    record["columns"] = columns
    return names, _frame(contracts, record)


def run(
    n: int, seed: int, cfg: PipelineConfig, contracts: ContractSet
) -> tuple[collections.Counter, list[str]]:
    """(outcome counts, the first findings): `n` mutated batches of the generated feed through
    `handle_raw_message`, state carried along as in a worker."""
    rng = random.Random(seed)
    batches = [m.value for m in generate(FeedSpec(duration_s=30, seed=seed, rate_scale=5))
               if isinstance(m.value, dict)]  # fmt: skip
    state: dict[str, Any] = {}
    outcomes: collections.Counter = collections.Counter()
    findings: list[str] = []
    for i in range(n):
        names, data = mutated(contracts, rng.choice(batches), rng)
        result = handle_raw_message(data, b"k", "raw", 0, i, state, cfg, contracts, 0)
        state.update(result.state_writes)
        stages = {d["stage"] for d in result.output.dead_letters}
        if "process" in stages:
            reason = result.output.dead_letters[0]["reason"]
            findings.append(f"{'+'.join(names)}: {reason}")
            outcomes["step raised (finding)"] += 1
        elif "decode" in stages:
            outcomes["refused at decode"] += 1
        elif stages:
            outcomes["processed, ticks dead-lettered"] += 1
        else:
            outcomes["processed"] += 1
        for name in names:
            outcomes[f"mutation {name}"] += 1
    return outcomes, findings


def main(argv: Sequence[str] | None = None) -> int:
    from mdstream.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    t = time.perf_counter()
    outcomes, findings = run(args.batches, args.seed, Settings.from_env().pipeline,
                             ContractSet.load())  # fmt: skip
    took = time.perf_counter() - t
    print(f"{args.batches:,} mutated batches in {took:.1f} s ({args.batches / took:,.0f}/s)")
    for what, count in sorted(outcomes.items()):
        print(f"  {what:<34} {count:>9,}")
    for finding in findings[:20]:
        print(f"  FINDING {finding}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
