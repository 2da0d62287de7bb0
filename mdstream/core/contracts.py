"""Avro contracts in Confluent wire framing: magic byte 0, 4-byte big-endian schema id, Avro body.

Any Confluent-compatible consumer can decode our topics. Schema ids come from a schema registry when
one is configured (see `mdstream.bus.registry`); without one, each schema gets a *local id*: a
stable 31-bit number derived from the schema's canonical form, which every mdstream process computes
identically, so our own producers and consumers agree without any shared service.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from mdstream.core.batch import ColumnError, TickColumns, pack_columns

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
MAGIC = 0
_HEADER = struct.Struct(">bI")

RAW_BATCH = "RawMarketDataBatch"
RAW_EVENT = "RawMarketDataEvent"
NORMALIZED = "NormalizedMarketDataEvent"
CORPORATE_ACTION = "CorporateActionAppliedEvent"
ALERT = "DataQualityAlertEvent"
DEAD_LETTER = "DeadLetter"
ANNOUNCEMENT = "CorporateActionAnnouncement"
RAW_BARS = "RawBarBatch"
CONSENSUS = "ConsensusPriceEvent"
CONTRACTS = (
    RAW_BATCH,
    RAW_EVENT,
    NORMALIZED,
    CORPORATE_ACTION,
    ALERT,
    DEAD_LETTER,
    ANNOUNCEMENT,
    RAW_BARS,
    CONSENSUS,
)


#: Earlier versions we still read (files `schemas/<name>.<version>.avsc`), never write.
LEGACY = {RAW_BATCH: ("v1",)}


class DecodeError(ValueError):
    """The bytes are not a message of the expected contract; the reason is in the message."""


def load_schema_text(name: str) -> str:
    return (SCHEMA_DIR / f"{name}.avsc").read_text()


def local_schema_id(schema_text: str) -> int:
    """Registry-free id: first 31 bits of SHA-256 over the Avro parsing canonical form."""
    canonical = to_parsing_canonical_form(json.loads(schema_text))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class Contract:
    name: str
    text: str
    parsed: Any
    schema_id: int


@dataclass
class ContractSet:
    """The schemas we write with, by name, and every schema id we can read, by id."""

    by_name: dict[str, Contract] = field(default_factory=dict)
    by_id: dict[int, Contract] = field(default_factory=dict)

    @classmethod
    def load(cls, ids: Mapping[str, int] | None = None) -> ContractSet:
        """Load all contracts; `ids` (from a registry) overrides the local ids by name."""
        contracts = cls()
        for name in CONTRACTS:
            text = load_schema_text(name)
            schema_id = (ids or {}).get(name, local_schema_id(text))
            contract = Contract(name, text, fastavro.parse_schema(json.loads(text)), schema_id)
            contracts.by_name[name] = contract
            contracts.by_id[schema_id] = contract
            # Local ids stay readable even when a registry assigned others.
            contracts.by_id.setdefault(local_schema_id(text), contract)
            for version in LEGACY.get(name, ()):
                old = load_schema_text(f"{name}.{version}")
                old_id = local_schema_id(old)
                parsed = fastavro.parse_schema(json.loads(old))
                contracts.by_id.setdefault(old_id, Contract(name, old, parsed, old_id))
        return contracts

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """A raw batch may come in row form (a list of `ticks`): it is packed into columns."""
        contract = self.by_name[name]
        if name == RAW_BATCH and "ticks" in record:
            ticks = record["ticks"]
            record = {k: v for k, v in record.items() if k != "ticks"}
            record["columns"] = pack_columns(ticks)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, contract.schema_id))
        fastavro.schemaless_writer(buf, contract.parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes, expected: str | None = None) -> tuple[str, dict[str, Any]]:
        """Decode a framed message; returns (contract name, record). Raises DecodeError.

        A raw batch comes back in row form (a list of `ticks`), whichever version it was
        written in; the pipeline reads its columns directly with `decode_raw_batch`."""
        name, record = self._decode(data, expected)
        if name == RAW_BATCH and "columns" in record:
            record = self._columns(record).to_record()
        return name, record

    def decode_raw_batch(self, data: bytes) -> TickColumns:
        """A raw batch as columns: its arrays read straight from the message's bytes."""
        return self._columns(self._decode(data, RAW_BATCH)[1])

    @staticmethod
    def _columns(record: Mapping[str, Any]) -> TickColumns:
        try:
            uuid.UUID(record["batchId"])  # tick event ids derive from it (uuid5)
        except ValueError:
            raise DecodeError(
                f"RawMarketDataBatch batchId {record['batchId']!r} is not a UUID"
            ) from None
        try:
            return TickColumns.from_record(record)
        except ColumnError as exc:
            raise DecodeError(f"RawMarketDataBatch columns: {exc}") from exc

    def _decode(self, data: bytes, expected: str | None) -> tuple[str, dict[str, Any]]:
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) < _HEADER.size:
            raise DecodeError(f"not a framed Avro message ({len(data or b'')} bytes)")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(
                f"bad magic byte {magic} (expected {MAGIC}): not Confluent-framed Avro"
            )
        contract = self.by_id.get(schema_id)
        if contract is None:
            raise DecodeError(f"unknown schema id {schema_id}")
        if expected is not None and contract.name != expected:
            raise DecodeError(f"schema {contract.name} where {expected} was expected")
        body = io.BytesIO(bytes(data[_HEADER.size :]))
        try:
            record = fastavro.schemaless_reader(body, contract.parsed, None)
        except Exception as exc:  # fastavro raises several types on truncated/garbled input
            raise DecodeError(f"Avro body does not match {contract.name}: {exc!r}") from exc
        if body.tell() != len(data) - _HEADER.size:
            raise DecodeError(
                f"{len(data) - _HEADER.size - body.tell()} trailing bytes after {contract.name}"
            )
        return contract.name, record
