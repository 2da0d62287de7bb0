"""Schema ids from a Confluent-compatible schema registry, when one is configured.

Each contract is registered under the subject ``<name>-value`` (RecordNameStrategy-like: one subject
per contract, whatever topic carries it). Without a registry the local ids of
`mdstream.core.contracts` are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdstream.core.contracts import CONTRACTS, load_schema_text

if TYPE_CHECKING:
    from mdstream.settings import Settings


def register_all(url: str) -> dict[str, int]:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": url})
    return {
        name: client.register_schema(
            f"io.mdstream.v1.{name}-value", Schema(load_schema_text(name), "AVRO")
        )
        for name in CONTRACTS
    }


def contract_ids(settings: Settings) -> dict[str, int] | None:
    return register_all(settings.schema_registry_url) if settings.schema_registry_url else None
