"""Lineage of a bar: the raw events it came from, which entered it, and the verdict on each.

A NormalizedMarketDataEvent carries its `lineage` (raw partition and offset range, provider in
`sources`, checks passed, flags seen). The tick-level verdicts are not stored anywhere: they are
recomputed, exactly, by replaying the raw partition up to the bar's last raw offset through the
same step (`mdstream.core.processor.recompute`: the pipeline is a deterministic function of the raw
topic). The ticks found to have entered the bar must add up to its trade count and volume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mdstream.core.batch import tick_event_id
from mdstream.core.config import PipelineConfig
from mdstream.core.contracts import RAW_BATCH, ContractSet, DecodeError
from mdstream.core.processor import RawMessage, recompute
from mdstream.core.quality.checks import EXCLUDING, names


def trace(
    bar: Mapping[str, Any],
    raw: Iterable[RawMessage],
    cfg: PipelineConfig,
    contracts: ContractSet,
) -> dict[str, Any]:
    """The raw events behind `bar`, from the raw topic's messages of its partition."""
    lineage = bar["lineage"]
    partition, first, last = (
        lineage["raw_partition"], lineage["raw_offset_first"], lineage["raw_offset_last"],
    )  # fmt: skip
    if partition is None or first is None or last is None:
        raise ValueError(f"bar {bar['eventId']} carries no raw offsets to trace")
    messages = sorted(
        (m for m in raw if m.partition == partition and m.offset <= last), key=lambda m: m.offset
    )
    out, _, _ = recompute(messages, cfg, contracts)
    source, symbol = bar["sources"][0], bar["instrument"]["symbol"]
    events, used, volume = [], 0, 0.0
    for m in messages:
        if m.offset < first:
            continue
        try:
            _, batch = contracts.decode(m.value, RAW_BATCH)
        except DecodeError:
            continue
        if batch["source"] != source or batch["instrument"]["symbol"] != symbol:
            continue
        verdict = out.tick_quality.get(batch["batchId"])
        for i, t in enumerate(batch["ticks"]):
            if not bar["window_start"] <= t["timestamp"] < bar["window_end"]:
                continue
            flags = verdict["flags"][i] if verdict else 0
            score = verdict["scores"][i] if verdict else 0.0
            entered = t["kind"] == "TRADE" and score > 0 and not flags & int(EXCLUDING)
            if entered:
                used += 1
                volume += t["volume"]
            events.append(
                {
                    "eventId": tick_event_id(batch["batchId"], i),
                    "batchId": batch["batchId"],
                    "raw_offset": m.offset,
                    "kind": t["kind"],
                    "timestamp": t["timestamp"],
                    "price": t["price"],
                    "volume": t["volume"],
                    "quality_score": score,
                    "flags": names(flags),
                    "entered_bar": entered,
                }
            )
    return {
        "bar": bar["eventId"],
        "source": source,
        "instrument": symbol,
        "window": [bar["window_start"], bar["window_end"]],
        "raw_partition": partition,
        "raw_offsets": [first, last],
        "checks_passed": lineage["checks_passed"],
        "adjustments_applied": bar.get("adjustments_applied", []),
        "events": events,
        "trades_entered": used,
        "volume_entered": volume,
        "consistent": used == bar["ohlcv"]["trade_count"]
        and abs(volume - bar["ohlcv"]["volume"]) <= 1e-9 * max(1.0, volume),
    }
