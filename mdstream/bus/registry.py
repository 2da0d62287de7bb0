"""Schema ids from a Confluent-compatible schema registry, when one is configured.

Each contract is registered under the subject ``io.mdstream.v1.<name>-value`` (one subject per
contract, whatever topic carries it), with BACKWARD compatibility: a new version must read what
the previous one wrote, so the registry refuses, say, a field added without a default. Without a
registry the local ids of `mdstream.core.contracts` are used.

The project's registry is Apicurio (`mdstream services up`; `MDSTREAM_SCHEMA_REGISTRY_URL` is its
`/apis/ccompat/v7` root). A registry that is down at start is an error at once, not a hang.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mdstream.core.contracts import CONTRACTS, load_schema_text

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from mdstream.settings import Settings

COMPATIBILITY = "BACKWARD"


class RegistryUnavailable(RuntimeError):
    """The configured schema registry cannot be reached."""


class IncompatibleSchema(RuntimeError):
    """A contract differs from its registered version in a way the compatibility rule refuses."""


PREFIX = "io.mdstream.v1"


def subject(name: str, prefix: str = PREFIX) -> str:
    """`prefix` gives a deployment (or a test) subjects of its own on a shared registry."""
    return f"{prefix}.{name}-value"


def _client(url: str, timeout: float) -> SchemaRegistryClient:
    """A client, after one quick request proves the registry answers (fail fast, clearly)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/subjects", timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        raise RegistryUnavailable(
            f"schema registry at {url} answered HTTP {exc.code} to GET /subjects"
            " (is the URL the Confluent-compatible root, e.g. .../apis/ccompat/v7?)"
        ) from exc
    except OSError as exc:
        raise RegistryUnavailable(
            f"schema registry at {url} is unreachable ({exc}); start it (`mdstream services up"
            " --only registry`) or unset MDSTREAM_SCHEMA_REGISTRY_URL to use local schema ids"
        ) from exc
    return SchemaRegistryClient({"url": url, "timeout": int(max(timeout, 1))})


def register_all(
    url: str,
    texts: Mapping[str, str] | None = None,
    names: Iterable[str] = CONTRACTS,
    timeout: float = 5.0,
    prefix: str = PREFIX,
) -> dict[str, int]:
    """Register each contract (BACKWARD per subject); returns the registry's ids by name.
    `texts` overrides a contract's schema text (tests evolve a schema this way)."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = _client(url, timeout)
    ids = {}
    for name in names:
        text = (texts or {}).get(name) or load_schema_text(name)
        try:
            client.set_compatibility(subject(name, prefix), COMPATIBILITY)
            ids[name] = client.register_schema(subject(name, prefix), Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:
                raise IncompatibleSchema(
                    f"{name}: the registry refuses it as {COMPATIBILITY}-incompatible with"
                    f" {subject(name, prefix)}'s latest version: {exc.error_message}"
                ) from exc
            raise
    return ids


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "compatible", "new" (no version registered yet), "INCOMPATIBLE"
    detail: str = ""


def check_all(
    url: str, texts: Mapping[str, str] | None = None, timeout: float = 5.0, prefix: str = PREFIX
) -> list[Check]:
    """Each contract tried against its subject's latest registered version (nothing registered)."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = _client(url, timeout)
    known = set(client.get_subjects())
    out = []
    for name in CONTRACTS:
        text = (texts or {}).get(name) or load_schema_text(name)
        if subject(name, prefix) not in known:
            out.append(Check(name, "new"))
            continue
        try:
            ok = client.test_compatibility(subject(name, prefix), Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            out.append(Check(name, "INCOMPATIBLE", exc.error_message))
            continue
        out.append(Check(name, "compatible" if ok else "INCOMPATIBLE"))
    return out


def contract_ids(settings: Settings) -> dict[str, int] | None:
    return register_all(settings.schema_registry_url) if settings.schema_registry_url else None
