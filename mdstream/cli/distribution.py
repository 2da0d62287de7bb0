"""`mdstream mirror`, `mdstream latest`, `mdstream sink-latest`, `mdstream serve`,
`mdstream schemas check|register`: the distribution side's commands."""

from __future__ import annotations

import argparse
import logging


def _mirror(args: argparse.Namespace) -> int:
    from mdstream_agents.pulsar_mirror import run

    from mdstream.settings import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stats = run(settings)
    print(
        f"mirror stopped: {stats.mirrored} mirrored, {stats.deduplicated} dropped as duplicates"
        f" by Pulsar, {stats.undecodable} undecodable (dead-letter topic), {stats.commits} commits"
    )
    return 0


def _schemas(args: argparse.Namespace) -> int:
    """check: 1 when a contract is incompatible with its registered version; 2: no registry."""
    from mdstream.bus.registry import (
        IncompatibleSchema,
        RegistryUnavailable,
        check_all,
        register_all,
    )
    from mdstream.settings import settings

    url = args.url or settings.schema_registry_url
    if not url:
        print("mdstream schemas: no registry (set MDSTREAM_SCHEMA_REGISTRY_URL or --url)")
        return 2
    try:
        if args.action == "register":
            for name, schema_id in register_all(url).items():
                print(f"{name:<30} id {schema_id}")
            return 0
        checks = check_all(url)
    except RegistryUnavailable as exc:
        print(f"mdstream schemas: {exc}")
        return 2
    except IncompatibleSchema as exc:
        print(f"mdstream schemas: {exc}")
        return 1
    for check in checks:
        print(f"{check.name:<30} {check.status}" + (f": {check.detail}" if check.detail else ""))
    return 1 if any(c.status == "INCOMPATIBLE" for c in checks) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    mirror = subparsers.add_parser(
        "mirror", help="forward the committed Kafka outputs to Pulsar, exactly once"
    )
    mirror.set_defaults(func=_mirror)
    schemas = subparsers.add_parser(
        "schemas", help="try the contracts against the schema registry (BACKWARD), or register"
    )
    schemas.add_argument("action", choices=["check", "register"])
    schemas.add_argument("--url", default=None, help="default: MDSTREAM_SCHEMA_REGISTRY_URL")
    schemas.set_defaults(func=_schemas)
