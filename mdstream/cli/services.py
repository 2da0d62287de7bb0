"""`mdstream services up|down|status [--all | --only kafka,postgres,redis,pulsar,registry]`.

Without `--all`/`--only`, `up` and `status` cover the core services (all but Pulsar and the schema
registry) and `down` stops every one that runs; `--all` adds Pulsar and the registry."""

from __future__ import annotations

import argparse
import sys

from mdstream.services import SERVICE_NAMES, ServiceError, ensure_up, status, stop_all


def _run(args: argparse.Namespace) -> int:
    """Print one status line per service; exit 1 unless all are up (down: unless all are down)."""
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    if args.all:
        only = list(SERVICE_NAMES)
    try:
        if args.action == "up":
            ensure_up(only, timeout=args.timeout)
        elif args.action == "down":
            stop_all(only)
        statuses = status(only or (SERVICE_NAMES if args.action == "down" else None))
    except ServiceError as exc:
        print(f"mdstream services {args.action}: {exc}", file=sys.stderr)
        return 1
    for line in statuses:
        print(line.line())
    if args.action == "down":
        return 0 if not any(s.pid for s in statuses) else 1
    return 0 if all(s.up for s in statuses) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `services` sub-command to the top-level `mdstream` parser."""
    parser = subparsers.add_parser(
        "services", help="start/stop/check the local Kafka, PostgreSQL, Redis, Pulsar, registry"
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {SERVICE_NAMES}")
    parser.add_argument("--all", action="store_true", help="also Pulsar and the schema registry")
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds `up` waits for readiness"
    )
    parser.set_defaults(func=_run)
