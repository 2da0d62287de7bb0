"""The `mdstream` command: each sub-command is registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)` that adds its sub-command(s) and sets `func`.
_COMMAND_MODULES = [
    "mdstream.services.cli",
    "mdstream.demo",
    "mdstream.storage.bar_sink",
    "mdstream.ingest.cli",
    "mdstream.storage.instruments",
    "mdstream.backfill",
    "mdstream.split_scan",
    "mdstream.quality.cli",
    "mdstream.storage.archive",
    "mdstream.storage.replay",
    "mdstream.storage.lifecycle",
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


if __name__ == "__main__":
    sys.exit(main())
