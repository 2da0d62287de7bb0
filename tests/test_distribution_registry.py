"""The schema registry for real (Apicurio, Confluent-compatible API): BACKWARD enforced, registry
ids in our messages, old and new readers, and a registry that is down."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from mdstream.bus.registry import (
    IncompatibleSchema,
    RegistryUnavailable,
    check_all,
    register_all,
)
from mdstream.core.contracts import ALERT, CONTRACTS, Contract, ContractSet, load_schema_text
from mdstream.services import Endpoints, ensure_up
from mdstream.services.apicurio import find_java21
from tests.test_contracts import RECORDS

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]
MDSTREAM = str(Path(sys.executable).parent / "mdstream")
CTX = SerializationContext("any-topic", MessageField.VALUE)


@pytest.fixture(scope="module")
def registry() -> Endpoints:
    if find_java21() is None:
        pytest.skip("Apicurio needs Java 21+ and none is under /usr/lib/jvm (Debian 12 has none)")
    return ensure_up(only=["registry"])


def _alert_with(field: dict) -> str:
    schema = json.loads(load_schema_text(ALERT))
    schema["fields"].append(field)
    return json.dumps(schema)


def test_messages_carry_registry_ids_any_confluent_consumer_decodes(registry: Endpoints) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    ids = register_all(registry.schema_registry_url, prefix=prefix)
    assert set(ids) == set(CONTRACTS)
    contracts = ContractSet.load(ids)
    data = contracts.encode(ALERT, RECORDS[ALERT])
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == ids[ALERT]
    client = SchemaRegistryClient({"url": registry.schema_registry_url})
    assert AvroDeserializer(client)(data, CTX) == RECORDS[ALERT]
    # Registering again is idempotent: the same ids.
    assert register_all(registry.schema_registry_url, prefix=prefix) == ids
    assert {c.status for c in check_all(registry.schema_registry_url, prefix=prefix)} == {
        "compatible"
    }


def test_an_incompatible_change_is_refused_and_check_fails(registry: Endpoints) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = registry.schema_registry_url
    register_all(url, names=[ALERT], prefix=prefix)
    bad = _alert_with({"name": "venue", "type": "string"})  # no default: old data unreadable
    [check] = [c for c in check_all(url, {ALERT: bad}, prefix=prefix) if c.name == ALERT]
    assert check.status == "INCOMPATIBLE"
    with pytest.raises(IncompatibleSchema, match="BACKWARD"):
        register_all(url, {ALERT: bad}, names=[ALERT], prefix=prefix)


def test_a_compatible_change_is_accepted_and_old_and_new_readers_decode(
    registry: Endpoints,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = registry.schema_registry_url
    old_ids = register_all(url, names=[ALERT], prefix=prefix)
    new_text = _alert_with({"name": "venue", "type": "string", "default": "UNKNOWN"})
    new_ids = register_all(url, {ALERT: new_text}, names=[ALERT], prefix=prefix)
    assert new_ids[ALERT] != old_ids[ALERT]
    client = SchemaRegistryClient({"url": url})
    new_record = {**RECORDS[ALERT], "venue": "XNAS"}
    # A producer on the new contract writes with the new version's registry id.
    old_set = ContractSet.load(old_ids)
    new_set = ContractSet.load(old_ids)
    contract = Contract(
        ALERT, new_text, fastavro.parse_schema(json.loads(new_text)), new_ids[ALERT]
    )
    new_set.by_name[ALERT] = new_set.by_id[new_ids[ALERT]] = contract
    written_new = new_set.encode(ALERT, new_record)
    written_old = old_set.encode(ALERT, RECORDS[ALERT])
    # An old consumer (its reader schema: the old contract) reads it: the new field is dropped.
    old_reader = AvroDeserializer(client, load_schema_text(ALERT))
    assert old_reader(written_new, CTX) == RECORDS[ALERT]
    # BACKWARD: a consumer on the new contract reads what the old producers wrote (default).
    new_reader = AvroDeserializer(client, new_text)
    assert new_reader(written_old, CTX) == {**RECORDS[ALERT], "venue": "UNKNOWN"}


def test_a_registry_that_is_down_is_a_clear_error_at_once(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/apis/ccompat/v7"  # discard port: nothing listens
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        register_all(url)
    done = subprocess.run(
        [MDSTREAM, "schemas", "check", "--url", url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unreachable" in done.stdout and "MDSTREAM_SCHEMA_REGISTRY_URL" in done.stdout


def test_schemas_check_command_passes_on_the_repository_contracts(registry: Endpoints) -> None:
    done = subprocess.run(
        [MDSTREAM, "schemas", "register", "--url", registry.schema_registry_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        [MDSTREAM, "schemas", "check", "--url", registry.schema_registry_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("compatible") == len(CONTRACTS)
