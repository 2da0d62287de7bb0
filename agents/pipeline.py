"""raw tick batches → validated, event-time bars, quality alerts and dead letters, exactly once."""

from __future__ import annotations

import time

import faust
from mdstream_tables.state import consensus_table, pipeline_state_table

from mdstream.app import (
    alerts_topic,
    app,
    consensus_topic,
    contracts,
    dead_letter_topic,
    normalized_topic,
    ops,
    raw_topic,
    severity_alert_topics,
)
from mdstream.bus.eos import process_exactly_once, write_backs
from mdstream.bus.writeback import WriteBackTable
from mdstream.core.contracts import ALERT, CONSENSUS, DEAD_LETTER, NORMALIZED
from mdstream.core.processor import handle_raw_message
from mdstream.ops import metrics
from mdstream.settings import settings

# State is read and changed in memory and reaches the tables once per key per commit.
pipeline_state = WriteBackTable(pipeline_state_table)
consensus = WriteBackTable(consensus_table)
write_backs(app).extend((pipeline_state, consensus))


async def _handle(event: faust.EventT) -> None:
    msg = event.message
    result = handle_raw_message(
        msg.value,
        msg.key,
        msg.topic,
        msg.partition,
        msg.offset,
        pipeline_state,
        settings.pipeline,
        contracts,
        time.time_ns(),
    )
    for key, value in result.state_writes.items():
        pipeline_state.set(key, value, event)
    if ops.sensor is not None:
        ops.sensor.ticks_in(msg.tp, result.ticks)
    for stage, seconds in result.stage_seconds.items():
        metrics.STAGE_SECONDS.labels(stage).observe(seconds)
    out = result.output
    for symbol, record in out.consensus.items():
        consensus.set(symbol, record, event)
    for bar in out.bars:
        await normalized_topic.send(
            key=bar["instrument"]["symbol"].encode(),
            value=contracts.encode(NORMALIZED, bar),
            partition=msg.partition,
        )
    for alert in out.alerts:
        value = contracts.encode(ALERT, alert)
        for topic in (alerts_topic, severity_alert_topics[alert["severity"]]):
            await topic.send(key=alert["instrument"].encode(), value=value, partition=msg.partition)
    for record in out.consensus_events:
        await consensus_topic.send(
            key=record["instrument"].encode(),
            value=contracts.encode(CONSENSUS, record),
            partition=msg.partition,
        )
    for record in out.dead_letters:
        await dead_letter_topic.send(
            key=msg.key, value=contracts.encode(DEAD_LETTER, record), partition=msg.partition
        )


@app.agent(raw_topic, concurrency=1)
async def process_raw(stream: faust.StreamT) -> None:
    await process_exactly_once(app, stream, _handle)
