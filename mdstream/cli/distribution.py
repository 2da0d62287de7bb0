"""`mdstream mirror`, `mdstream latest`, `mdstream sink-latest`, `mdstream serve`,
`mdstream schemas check|register`: the distribution side's commands."""

from __future__ import annotations

import argparse
import contextlib
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


def latest_store(settings):
    from mdstream.distribution.latest import LatestStore

    return LatestStore(settings.redis_url, prefix=f"md:{settings.app_id}:")


def _latest(args: argparse.Namespace) -> int:
    import json

    from mdstream.distribution.latest import LatestStore
    from mdstream.settings import settings

    store = LatestStore.for_settings(settings)
    try:
        found = store.get_many(args.symbols)
    finally:
        store.close()
    print(json.dumps(found, indent=2, sort_keys=True))
    return 0 if all(found.values()) else 1


def _sink_latest(args: argparse.Namespace) -> int:
    import signal

    from mdstream.bus.registry import contract_ids
    from mdstream.core.contracts import ContractSet
    from mdstream.distribution.latest import LatestSink, LatestStore
    from mdstream.settings import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    t = settings.topics
    sink = LatestSink(
        settings.bootstrap,
        (t.normalized, t.consensus, t.raw),
        LatestStore.for_settings(settings),
        ContractSet.load(contract_ids(settings)),
    )
    sink.run(lambda: stopping)
    print(f"latest sink stopped: {sink.applied} updates applied, {sink.reconnects} reconnects")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from mdstream.bus.registry import contract_ids
    from mdstream.core.contracts import ContractSet
    from mdstream.distribution.server import LiveServer, read_token
    from mdstream.settings import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t = settings.topics
    master = settings.pipeline.instruments
    server = LiveServer(
        settings.bootstrap,
        (t.normalized, t.consensus, t.alerts),
        contracts=ContractSet.load(contract_ids(settings)),
        known_instruments=sorted(master.periods) if master is not None else None,
        timeframes=settings.pipeline.intervals,
        token=read_token(os.environ),
    )
    host = args.host or settings.serve_host
    port = args.port or settings.serve_port
    print(f"live page: http://{host}:{port}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(host, port))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    mirror = subparsers.add_parser(
        "mirror", help="forward the committed Kafka outputs to Pulsar, exactly once"
    )
    mirror.set_defaults(func=_mirror)
    latest = subparsers.add_parser(
        "latest", help="the latest trade, quote, bars and consensus of instruments (Redis)"
    )
    latest.add_argument("symbols", nargs="+")
    latest.set_defaults(func=_latest)
    sink = subparsers.add_parser(
        "sink-latest", help="keep the latest prices in Redis from the committed Kafka outputs"
    )
    sink.set_defaults(func=_sink_latest)
    serve = subparsers.add_parser(
        "serve", help="the WebSocket feed and live page (candles, latest prices, alerts)"
    )
    serve.add_argument("--host", default=None, help="default MDSTREAM_SERVE_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="default MDSTREAM_SERVE_PORT (8765)")
    serve.set_defaults(func=_serve)
    schemas = subparsers.add_parser(
        "schemas", help="try the contracts against the schema registry (BACKWARD), or register"
    )
    schemas.add_argument("action", choices=["check", "register"])
    schemas.add_argument("--url", default=None, help="default: MDSTREAM_SCHEMA_REGISTRY_URL")
    schemas.set_defaults(func=_schemas)
