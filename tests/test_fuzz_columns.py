"""Mutated columnar raw batches through the processing step: each one is processed or
dead-lettered with a reason; none makes the step raise (benchmarks/fuzz_columns.py, short)."""

from __future__ import annotations

import random

import pytest

from benchmarks.fuzz_columns import MUTATIONS, mutated, run
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import RAW_BATCH, ContractSet, DecodeError
from mdstream.core.simulate import FeedSpec, generate

CS = ContractSet.load()


def test_two_thousand_mutated_batches_end_as_output_or_dead_letters() -> None:
    outcomes, findings = run(2000, seed=5, cfg=PipelineConfig(), contracts=CS)
    assert findings == []
    assert outcomes["processed"] and outcomes["processed, ticks dead-lettered"]
    assert outcomes["refused at decode"]
    assert all(outcomes[f"mutation {name}"] for name in MUTATIONS)


def test_every_decode_refusal_says_what_is_wrong() -> None:
    batch = next(m.value for m in generate(FeedSpec(duration_s=2, seed=3))
                 if isinstance(m.value, dict) and len(m.value["ticks"]) > 1)  # fmt: skip
    rng, refused = random.Random(9), 0
    for _ in range(300):
        _, data = mutated(CS, batch, rng)
        try:
            CS.decode_raw_batch(data)
        except DecodeError as exc:
            refused += 1
            assert any(w in str(exc) for w in ("column", "count", "Avro", "UUID", "trailing")), exc
    assert refused > 100


def test_a_batch_id_that_is_not_a_uuid_is_refused_at_decode() -> None:
    batch = next(m.value for m in generate(FeedSpec(duration_s=2, seed=3))
                 if isinstance(m.value, dict))  # fmt: skip
    data = CS.encode(RAW_BATCH, {**batch, "batchId": "not-a-uuid"})
    with pytest.raises(DecodeError, match="batchId 'not-a-uuid' is not a UUID"):
        CS.decode_raw_batch(data)
