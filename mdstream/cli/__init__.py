"""The `mdstream` command: each sub-command is registered by the module that owns it.
Command modules are edges: they may import anything in mdstream; nothing imports them."""

from __future__ import annotations

import argparse
import importlib

# Each module exposes `register(subparsers)` that adds its sub-command(s) and sets `func`.
_COMMAND_MODULES = [
    "mdstream.cli.services",
    "mdstream.cli.demo",
    "mdstream.storage.bar_sink",
    "mdstream.cli.ingest",
    "mdstream.storage.instruments",
    "mdstream.cli.backfill",
    "mdstream.cli.split_scan",
    "mdstream.cli.quality",
    "mdstream.cli.distribution",
    "mdstream.storage.archive",
    "mdstream.storage.replay",
    "mdstream.storage.lifecycle",
    "mdstream.storage.backup",
    "mdstream.ops.top",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdstream", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
