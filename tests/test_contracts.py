"""Avro contracts in Confluent framing: round trips, the wire format, ids, and every bad input."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdstream.core.batch import pack_columns
from mdstream.core.contracts import (
    ALERT,
    ANNOUNCEMENT,
    CONSENSUS,
    CONTRACTS,
    CORPORATE_ACTION,
    DEAD_LETTER,
    NORMALIZED,
    RAW_BARS,
    RAW_BATCH,
    RAW_EVENT,
    SCHEMA_DIR,
    ContractSet,
    DecodeError,
    load_schema_text,
    local_schema_id,
)
from mdstream.core.simulate import FeedSpec, generate

NS = 1_764_000_000_123_456_789
CS = ContractSet.load()

RECORDS: dict[str, dict[str, Any]] = {
    RAW_BATCH: {
        "batchId": "0b6c2a9e-7d1f-4c3a-9e55-1f0a2b3c4d5e",
        "timestamp": NS,
        "source": "polygon",
        "instrument": {"symbol": "AAPL", "exchange": "XNAS", "isin": "US0378331005"},
        "ticks": [
            {
                "kind": "TRADE",
                "timestamp": NS - 8_000_000,
                "provider_timestamp": NS - 1_000_000,
                "price": 228.51,
                "volume": 100.0,
                "bid": None,
                "ask": None,
                "sequence": 1_234_567,
                "conditions": "@ F",
            },
            {
                "kind": "QUOTE",
                "timestamp": NS - 7_000_000,
                "provider_timestamp": NS - 900_000,
                "price": None,
                "volume": None,
                "bid": 228.50,
                "ask": 228.52,
                "sequence": None,
                "conditions": None,
            },
        ],
    },
    RAW_EVENT: {
        "eventId": "5a1f8e1c-3c55-5b0e-9a39-0e7a3f8d2c11",
        "timestamp": NS,
        "source": "finnhub",
        "instrument": {"symbol": "MSFT", "exchange": "XNAS", "isin": None},
        "data": {
            "price": 415.2,
            "volume": 12.0,
            "bid": None,
            "ask": None,
            "timestamp": NS - 45_000_000,
        },
        "metadata": {
            "provider_timestamp": NS - 5_000_000,
            "ingestion_latency_ms": 45.0,
            "quality_score": 0.97,
            "quality_flags": ["OUT_OF_ORDER"],
        },
    },
    NORMALIZED: {
        "eventId": "9e107d9d-372b-5b38-8e0c-8a0d2e6f7c21",
        "timestamp": NS,
        "instrument": {
            "symbol": "NVDA",
            "exchange": "XNAS",
            "isin": "US67066G1040",
            "instrument_type": "EQUITY",
            "instrument_id": "BBG000BBJQV0",
        },
        "ohlcv": {
            "open": 141.9,
            "high": 142.35,
            "low": 141.7,
            "close": 142.1,
            "volume": 18_250.0,
            "vwap": 142.0412345,
            "trade_count": 61,
        },
        "timestamp_utc": 1_764_000_000_000_000_000,
        "interval": "1s",
        "window_start": 1_764_000_000_000_000_000,
        "window_end": 1_764_000_001_000_000_000,
        "quality_metrics": {
            "completeness": 2 / 3,
            "accuracy_score": 1.0,
            "timeliness_score": 1.0,
            "source_reliability": 1.0,
            "consistency_score": 0.9,
            "quality_score": 0.88,
        },
        "adjustments_applied": ["STOCK_SPLIT:2024-06-10"],
        "sources": ["alpaca"],
        "revision": 0,
        "correction": False,
        "session": "REGULAR",
        "lineage": {
            "raw_partition": 2,
            "raw_offset_first": 1041,
            "raw_offset_last": 1093,
            "raw_batches": 50,
            "raw_ticks": 61,
            "checks_passed": ["syntactic", "semantic"],
            "flags": ["OUT_OF_ORDER"],
            "quality_model": None,
        },
    },
    CONSENSUS: {
        "eventId": "5d0c5b8e-2f7a-5e39-9d59-6a3c0f1b2e44",
        "timestamp": NS,
        "instrument": "AAPL",
        "price": 228.51,
        "p25": 228.50,
        "p75": 228.52,
        "providers": 3,
        "as_of": NS - 2_000_000,
        "sources": [
            {"provider": "alpaca", "price": 228.51, "weight": 0.98},
            {"provider": "polygon", "price": 228.50, "weight": 0.97},
            {"provider": "finnhub", "price": 228.52, "weight": 0.71},
        ],
    },
    CORPORATE_ACTION: {
        "eventId": "1c5c0c0a-3f1d-5f0e-8f43-6c1d1c1e2f3a",
        "timestamp": NS,
        "instrument": {"symbol": "NVDA", "isin": "US67066G1040"},
        "action": {
            "type": "STOCK_SPLIT",
            "ratio": 10.0,
            "amount": None,
            "currency": None,
            "ex_date": "2024-06-10",
            "record_date": "2024-06-06",
            "source": "quandl",
        },
        "adjustments": {
            "price_adjustment_factor": 0.1,
            "volume_adjustment_factor": 10.0,
            "affected_date_range": {"start": None, "end": "2024-06-07"},
        },
    },
    ALERT: {
        "eventId": "3d8b2f7e-2a4c-5e9b-b1d0-7f6e5d4c3b2a",
        "timestamp": NS,
        "alert_type": "STALE_DATA",
        "severity": "HIGH",
        "status": "RAISED",
        "source": "finnhub",
        "instrument": "AAPL",
        "description": "no update from finnhub for AAPL in 2.4s (expected every 1s)",
        "metrics": {
            "last_update": NS - 2_400_000_000,
            "expected_frequency": "1s",
            "quality_score": None,
            "observed": 2.4,
            "reference": 2.0,
        },
    },
    ANNOUNCEMENT: {
        "announcementId": "feed-a/2024-0042",
        "announced_at": NS,
        "source": "feed-a",
        "instrument_id": "AAPL",
        "symbol": "AAPL",
        "isin": "US0378331005",
        "type": "CASH_DIVIDEND",
        "ratio": None,
        "amount": 0.24,
        "currency": "USD",
        "ex_date": "2024-05-10",
        "record_date": "2024-05-13",
        "new_symbol": None,
    },
    DEAD_LETTER: {
        "timestamp": NS,
        "stage": "decode",
        "reason": "unknown schema id 6775137",
        "source_topic": "md.raw",
        "source_partition": 3,
        "source_offset": 123_456_789_012,
        "source": None,
        "key": b"AAPL",
        "payload": b"\x00\x00garbage\xff\xfe\x00\x01",
    },
}
RECORDS[RAW_BARS] = {
    "batchId": "0d7b2f6e-8a55-5a43-9a52-3f7a3c1f0b11",
    "timestamp": NS,
    "source": "databento",
    "instrument": {"symbol": "ESU4", "exchange": "XCME", "isin": None},
    "interval": "1m",
    "bars": [
        {
            "start": 1_719_877_200_000_000_000,
            "open": 5527.25,
            "high": 5527.5,
            "low": 5527.0,
            "close": 5527.5,
            "volume": 180.0,
            "trade_count": None,
            "vwap": None,
        }
    ],
}


def test_every_contract_has_a_sample() -> None:
    assert set(RECORDS) == set(CONTRACTS)


@pytest.mark.parametrize("name", CONTRACTS)
def test_round_trip(name: str) -> None:
    data = CS.encode(name, RECORDS[name])
    assert CS.decode(data) == (name, RECORDS[name])
    assert CS.decode(data, expected=name) == (name, RECORDS[name])
    assert CS.decode(bytearray(data)) == (name, RECORDS[name])
    assert CS.decode(memoryview(data)) == (name, RECORDS[name])


@pytest.mark.parametrize("name", CONTRACTS)
def test_wire_format_is_confluent_framing(name: str) -> None:
    data = CS.encode(name, RECORDS[name])
    assert data[0] == 0
    schema_id = local_schema_id(load_schema_text(name))
    assert data[1:5] == schema_id.to_bytes(4, "big")
    assert struct.unpack(">I", data[1:5])[0] == CS.by_name[name].schema_id == schema_id


@pytest.mark.parametrize("name", CONTRACTS)
def test_plain_fastavro_reads_the_body_with_the_schema_file(name: str) -> None:
    """What any Confluent consumer does: drop the 5-byte header, read with the writer schema."""
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / f"{name}.avsc").read_text()))
    data = CS.encode(name, RECORDS[name])
    body = io.BytesIO(data[5:])
    record = fastavro.schemaless_reader(body, schema, None)
    assert body.tell() == len(data) - 5
    if name != RAW_BATCH:
        assert record == RECORDS[name]
        return
    # The raw batch's ticks are columns any reader turns into arrays with the documented dtypes.
    ticks, columns = RECORDS[name]["ticks"], record.pop("columns")
    assert record == {k: v for k, v in RECORDS[name].items() if k != "ticks"}
    assert columns["count"] == len(ticks)
    assert list(columns["kind"]) == [{"TRADE": 0, "QUOTE": 1}[t["kind"]] for t in ticks]
    assert np.frombuffer(columns["event_ts"], "<i8").tolist() == [t["timestamp"] for t in ticks]
    prices = np.frombuffer(columns["price"], "<f8")
    assert [None if np.isnan(p) else p for p in prices] == [t["price"] for t in ticks]
    seqs = np.frombuffer(columns["sequence"], "<i8").tolist()
    assert seqs == [-(2**63) if t["sequence"] is None else t["sequence"] for t in ticks]
    assert columns["conditions"] == [t["conditions"] for t in ticks]


def _v1_message(record: dict[str, Any]) -> bytes:
    """A raw batch as version 1 wrote it: one Avro record per tick, under v1's local id."""
    text = load_schema_text(f"{RAW_BATCH}.v1")
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, local_schema_id(text)))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(text)), record)
    return buf.getvalue()


def test_version_1_raw_batches_stay_readable_as_rows_and_as_columns() -> None:
    batch = RECORDS[RAW_BATCH]
    old = _v1_message(batch)
    assert old[1:5] != CS.encode(RAW_BATCH, batch)[1:5]  # another schema, another id
    assert CS.decode(old, expected=RAW_BATCH) == (RAW_BATCH, batch)
    new_cols, old_cols = CS.decode_raw_batch(CS.encode(RAW_BATCH, batch)), CS.decode_raw_batch(old)
    for name in ("is_trade", "ts", "provider_ts", "price", "volume", "bid", "ask", "sequence"):
        np.testing.assert_array_equal(getattr(new_cols, name), getattr(old_cols, name))
    assert new_cols.conditions == old_cols.conditions == ("@ F", None)
    assert new_cols.to_record() == batch


def _with_columns(**changes: Any) -> bytes:
    """The test batch on the wire with some of its columns replaced."""
    contract = CS.by_name[RAW_BATCH]
    record = {k: v for k, v in RECORDS[RAW_BATCH].items() if k != "ticks"}
    record["columns"] = {**pack_columns(RECORDS[RAW_BATCH]["ticks"]), **changes}
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, contract.schema_id))
    fastavro.schemaless_writer(buf, contract.parsed, record)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"price": b"\x00" * 8}, "column price holds 8 bytes, 2 ticks need 16"),
        ({"event_ts": b"\x00" * 17}, "column event_ts holds 17 bytes, 2 ticks need 16"),
        ({"count": 3}, "column kind holds 2 bytes, 3 ticks need 3"),
        ({"count": -1}, "negative tick count -1"),
        ({"kind": b"\x00\x07"}, "column kind holds code 7"),
        ({"sequence": b"\x01"}, "column sequence holds 1 bytes"),
        ({"conditions": ["@"]}, "column conditions holds 1 values, count is 2"),
    ],
)
def test_columns_that_do_not_fit_together_are_a_decode_error(changes: dict, match: str) -> None:
    data = _with_columns(**changes)
    for decode in (CS.decode, CS.decode_raw_batch):
        with pytest.raises(DecodeError, match=f"RawMarketDataBatch columns: {match}"):
            decode(data)


def test_confluent_avro_serde_interoperates_through_a_registry() -> None:
    """Registry ids in, registry ids out: confluent-kafka's own serde reads and writes our bytes."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    registry = SchemaRegistryClient.new_client({"url": "mock://contracts"})  # in-process mock
    ids = {
        name: registry.register_schema(f"{name}-value", Schema(load_schema_text(name), "AVRO"))
        for name in (RAW_BATCH, ALERT)
    }
    contracts = ContractSet.load(ids)
    ctx = SerializationContext("md.raw", MessageField.VALUE)

    ours = contracts.encode(RAW_BATCH, RECORDS[RAW_BATCH])
    assert ours[1:5] == ids[RAW_BATCH].to_bytes(4, "big")
    theirs_raw = AvroDeserializer(registry)(ours, ctx)
    assert theirs_raw.pop("columns") == pack_columns(RECORDS[RAW_BATCH]["ticks"])
    assert theirs_raw == {k: v for k, v in RECORDS[RAW_BATCH].items() if k != "ticks"}

    serializer = AvroSerializer(
        registry,
        load_schema_text(ALERT),
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    theirs = serializer(RECORDS[ALERT], SerializationContext(ALERT, MessageField.VALUE))
    assert theirs is not None
    assert contracts.decode(theirs, expected=ALERT) == (ALERT, RECORDS[ALERT])


def test_local_ids_are_stable_distinct_and_31_bit() -> None:
    again = ContractSet.load()
    ids = {name: CS.by_name[name].schema_id for name in CONTRACTS}
    assert ids == {name: again.by_name[name].schema_id for name in CONTRACTS}
    assert len(set(ids.values())) == len(CONTRACTS)
    assert all(0 <= i < 2**31 for i in ids.values())
    legacy = local_schema_id(load_schema_text(f"{RAW_BATCH}.v1"))
    assert set(CS.by_id) == set(ids.values()) | {legacy}  # version 1 of the raw batch: read only


def test_local_id_depends_on_the_canonical_schema_only() -> None:
    text = load_schema_text(RAW_BATCH)
    schema = json.loads(text)
    base = local_schema_id(text)
    # Formatting and docs are not part of the parsing canonical form.
    assert local_schema_id(json.dumps(schema, indent=None, separators=(",", ":"))) == base
    schema["doc"] = "a different description"
    assert local_schema_id(json.dumps(schema)) == base
    # A new field is a different schema.
    schema["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    assert local_schema_id(json.dumps(schema)) != base


def test_registry_id_is_written_and_the_local_id_stays_readable() -> None:
    contracts = ContractSet.load({RAW_BATCH: 123})
    data = contracts.encode(RAW_BATCH, RECORDS[RAW_BATCH])
    assert data[:5] == b"\x00\x00\x00\x00\x7b"
    assert contracts.decode(data) == (RAW_BATCH, RECORDS[RAW_BATCH])
    # Messages written before the registry existed (local id) still decode.
    legacy = CS.encode(RAW_BATCH, RECORDS[RAW_BATCH])
    assert contracts.decode(legacy, expected=RAW_BATCH) == (RAW_BATCH, RECORDS[RAW_BATCH])
    # Contracts without a registry id keep their local id.
    alert = contracts.encode(ALERT, RECORDS[ALERT])
    assert alert[1:5] == local_schema_id(load_schema_text(ALERT)).to_bytes(4, "big")
    # A process without the registry ids cannot read id 123.
    with pytest.raises(DecodeError, match="unknown schema id 123"):
        CS.decode(data)


# --------------------------------------------------------------------------------------------
# bad input: always DecodeError, with a reason a human can act on


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"not a framed Avro message \(0 bytes\)"),
        (None, r"not a framed Avro message \(0 bytes\)"),
        (b"\x00", r"\(1 bytes\)"),
        (b"\x00\x00\x00\x01", r"\(4 bytes\)"),
        ("not bytes at all", "not a framed Avro message"),
        (b"\x01" + CS.encode(ALERT, RECORDS[ALERT])[1:], "bad magic byte 1"),
        (b'{"price": 1.0}', "bad magic byte 123"),
        (b"\x00\x00\x00\x00\x07" + b"\x02" * 20, "unknown schema id 7"),
    ],
)
def test_decode_rejects_what_is_not_a_known_framed_message(data: Any, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        CS.decode(data)


def test_decode_rejects_another_contract_where_one_is_expected() -> None:
    data = CS.encode(ALERT, RECORDS[ALERT])
    with pytest.raises(DecodeError, match=f"schema {ALERT} where {RAW_BATCH} was expected"):
        CS.decode(data, expected=RAW_BATCH)


@pytest.mark.parametrize("name", CONTRACTS)
def test_decode_rejects_every_truncation(name: str) -> None:
    data = CS.encode(name, RECORDS[name])
    for cut in range(5, len(data)):
        with pytest.raises(DecodeError, match=f"Avro body does not match {name}"):
            CS.decode(data[:cut])


@pytest.mark.parametrize("name", CONTRACTS)
def test_decode_rejects_trailing_bytes(name: str) -> None:
    data = CS.encode(name, RECORDS[name])
    with pytest.raises(DecodeError, match=f"1 trailing bytes after {name}"):
        CS.decode(data + b"\x00")
    with pytest.raises(DecodeError, match=f"3 trailing bytes after {name}"):
        CS.decode(data + b"abc")


def test_simulated_garbage_is_rejected() -> None:
    feed = FeedSpec(duration_s=5, garbage_message_rate=0.05, instruments=())
    assert list(generate(feed)) == []  # no instruments, no batches, nothing to garble
    feed = FeedSpec(duration_s=5, garbage_message_rate=0.05)
    garbage = [m.value for m in generate(feed) if isinstance(m.value, bytes)]
    assert garbage
    for data in garbage:
        with pytest.raises(DecodeError):
            CS.decode(data, expected=RAW_BATCH)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(CONTRACTS), body=st.binary(max_size=200))
def test_decode_of_arbitrary_bodies_raises_only_decode_error(name: str, body: bytes) -> None:
    data = CS.encode(name, RECORDS[name])[:5] + body
    try:
        decoded_name, record = CS.decode(data)
    except DecodeError:
        return
    # When it decodes, it is a whole record of the contract the header names.
    assert decoded_name == name
    fields = {f["name"] for f in json.loads(load_schema_text(name))["fields"]}
    if name == RAW_BATCH:  # read back in row form: the columns become a list of ticks
        fields = fields - {"columns"} | {"ticks"}
    assert set(record) == fields
