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


def register(subparsers: argparse._SubParsersAction) -> None:
    mirror = subparsers.add_parser(
        "mirror", help="forward the committed Kafka outputs to Pulsar, exactly once"
    )
    mirror.set_defaults(func=_mirror)
