"""mdstream's peers, measured in one run on the same broker over the same raw messages.

    python -m benchmarks.compare [--seconds N] [--rate-scale X] [--partitions P] [--timeout S]
        [--include-mdstream] [--quix-python PATH] [--skip ROW] [--keep]

The feed comes from `mdstream.core.simulate` (as in benchmarks.pipeline) and is published once,
with `mdstream.bus.kafka.publish`, to one raw topic; each row then reads that topic under a
consumer group of its own. Rows, from the floor up:

- L0 produce: Kafka's `ProducerPerformance` (kafka-producer-perf-test, from the broker's own
  jars), max(N, 100,000) random records of the feed's mean raw message size to a topic of its
  own, with L1's producer settings (linger.ms=5, and batch.size=1000000, librdkafka's default;
  the Java client's 16 KB would hold only a few such records per request): what the broker takes
  from one client.
- L0 consume: Kafka's `ConsumerPerformance` (kafka-consumer-perf-test) reading those records
  back; its fetch rate (group join excluded). Not the raw topic itself: N messages are read in a
  few fetches, so the figure would be fetch round trips (fetch.max.wait.ms), not throughput.
- L1 plain / L1 txn: `benchmarks.pipeline.ceiling.run_passthrough`, bare confluent-kafka
  consume → produce of each message unchanged, without and with transactions (offsets in the
  transaction, a commit every MDSTREAM_COMMIT_INTERVAL); passes repeat until 3 s of work. No
  decoding.
- faust per-event (`benchmarks/peers/faust_per_event.py`) and Quix Streams
  (`benchmarks/peers/quix_bars.py`): real worker processes, each framework's exactly-once mode,
  every message decoded, trades folded one at a time into 1 s and 1 min OHLCV bars per
  instrument (`benchmarks/peers/bars.py`, the same function for both), state in the framework's
  changelogged store, final bars produced as JSON. Quix runs under its own interpreter
  (`--quix-python`, default `.venv-quix/bin/python`; see `benchmarks/peers/requirements-quix.txt`).
- mdstream (`--include-mdstream`): `benchmarks.pipeline.throughput.run_throughput`, the real
  worker, which does more (validation, quality, consensus, alerts, 1 h bars too, Avro outputs).

Worker rows are timed like benchmarks.pipeline's throughput phase: from the worker's ready log
line until its group's committed offsets cover every raw message (`--timeout` caps it; a capped
row shows the rate so far). ticks/s is msgs/s × the feed's mean ticks per raw message (for L0
produce, whose records are random bytes, that is only a like-for-like scale). The machine is
shared: figures are indicative, the ratios more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import collections
import gc
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from benchmarks.pipeline.ceiling import run_passthrough
from benchmarks.pipeline.harness import (
    COMMIT_INTERVAL_S,
    CONTRACTS,
    FAUST,
    CommitWatcher,
    Pipeline,
    cpu_seconds,
    reproduce_command,
    say,
)
from benchmarks.pipeline.throughput import run_throughput
from mdstream.bus.kafka import ensure_topics, publish, read_all
from mdstream.core.contracts import RAW_BATCH
from mdstream.core.simulate import FeedMessage, FeedSpec, generate
from mdstream.services import Settings as ServiceSettings
from mdstream.services import ensure_up
from mdstream.services.kafka import KafkaService

REPO = Path(__file__).resolve().parents[1]
ROWS = ("l0", "l1", "faust", "quix")


@dataclass
class Row:
    name: str
    msgs_per_s: float
    ticks_per_s: float
    detail: str
    bars: dict[str, int] | None = None
    cpu_share: float | None = None


# ---------------------------------------------------------------------------------------------
# Peers as worker processes, under benchmarks.pipeline.harness's process handling


@dataclass
class Peer(Pipeline):
    """A peer's worker reading the shared raw topic `source`; its bars go to "<app id>.bars"."""

    source: str = ""

    @property
    def sink(self) -> str:
        return f"{self.app_id}.bars"

    def create_topics(self) -> None:
        ensure_topics(self.bootstrap, [self.sink], self.partitions)

    def worker_env(self) -> dict[str, str]:
        """The repository first on the path: the peers' modules are not installed."""
        env = super().worker_env()
        path = [str(REPO), *filter(None, [env.get("PYTHONPATH")])]
        env.update(PEER_SOURCE=self.source, PEER_SINK=self.sink, PYTHONPATH=os.pathsep.join(path))
        return env


@dataclass
class FaustPeer(Peer):
    def command(self) -> list[str]:
        return [FAUST, "-A", "benchmarks.peers.faust_per_event", "worker", "-l", "info"]


@dataclass
class QuixPeer(Peer):
    python: str = ""
    ready_marker: ClassVar[str] = "The application started and is now processing incoming"

    def command(self) -> list[str]:
        return [self.python, "-m", "benchmarks.peers.quix_bars"]


def run_peer(peer: Peer, n_msgs: int, timeout_s: float) -> tuple[float, int, float | None]:
    """(seconds from ready to all committed, or to the timeout; messages committed; CPU share)."""
    peer.create_topics()
    watcher = CommitWatcher(peer.bootstrap, peer.app_id, peer.source, peer.partitions)
    try:
        peer.start_worker()
        t_ready = peer.wait_ready()
        say(f"{peer.label} worker {peer.pid} ready; waiting for commits")
        cpu0 = cpu_seconds(peer.pid)
        committed = 0
        while committed < n_msgs and time.monotonic() - t_ready < timeout_s:
            peer.check_alive()
            committed = watcher.committed()
            time.sleep(0.05)
        wall = time.monotonic() - t_ready
        cpu1 = cpu_seconds(peer.pid)
    finally:
        watcher.close()
        peer.stop_worker()
    share = (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None and wall else None
    return wall, committed, share


def peer_bars(peer: Peer) -> dict[str, int]:
    """Committed bars per interval on the peer's sink."""
    counts = collections.Counter(
        json.loads(rec.value)["interval"] for rec in read_all(peer.bootstrap, [peer.sink], 2.0)
    )
    return dict(counts)


# ---------------------------------------------------------------------------------------------
# L0: Kafka's own perf tools


def kafka_tool(tool: str, args: Sequence[str], timeout_s: float) -> str:
    """stdout of org.apache.kafka.tools.<tool> run from the broker's jars."""
    lib = ServiceSettings.from_env().kafka_lib_dir
    cmd = ["java", "-Xmx512m", "-cp", f"{lib}/*", f"org.apache.kafka.tools.{tool}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode:
        raise RuntimeError(f"{tool} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def l0_produce(bootstrap: str, topic: str, records: int, size: int, partitions: int) -> float:
    ensure_topics(bootstrap, [topic], partitions)
    out = kafka_tool(
        "ProducerPerformance",
        [
            "--topic", topic, "--num-records", str(records), "--record-size", str(size),
            "--throughput", "-1", "--producer-props", f"bootstrap.servers={bootstrap}",
            "linger.ms=5", "batch.size=1000000",
        ],
        120,
    )  # fmt: skip
    found = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", out)
    if not found:
        raise RuntimeError(f"no summary in ProducerPerformance output:\n{out[-2000:]}")
    return float(found[-1][1])


def l0_consume(bootstrap: str, topic: str, messages: int, group: str) -> float:
    out = kafka_tool(
        "ConsumerPerformance",
        [
            "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(messages),
            "--group", group, "--timeout", "30000",
        ],
        120,
    )  # fmt: skip
    lines = [line.strip() for line in out.splitlines()]
    for header, values in itertools.pairwise(lines):
        if "fetch.nMsg.sec" in header:
            stats = dict(zip(header.split(", "), values.split(", "), strict=False))
            return float(stats["fetch.nMsg.sec"])
    raise RuntimeError(f"no stats in ConsumerPerformance output:\n{out[-2000:]}")


# ---------------------------------------------------------------------------------------------


def mean_size(messages: Sequence[FeedMessage]) -> int:
    sizes = [
        len(CONTRACTS.encode(RAW_BATCH, m.value)) if isinstance(m.value, dict) else len(m.value)
        for m in messages
    ]
    return round(sum(sizes) / len(sizes))


def default_quix_python() -> str:
    venv = REPO / ".venv-quix" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def print_table(args: argparse.Namespace, feed_line: str, rows: list[Row]) -> None:
    by_name = {r.name: r for r in rows}
    plain, txn = by_name.get("L1 plain"), by_name.get("L1 txn")

    def ratio(row: Row, base: Row | None) -> str:
        return f"{row.msgs_per_s / base.msgs_per_s:.3f}" if base and base.msgs_per_s else "-"

    def bars(row: Row) -> str:
        return "/".join(str(row.bars.get(k, 0)) for k in ("1s", "1m")) if row.bars else "-"

    def cpu(row: Row) -> str:
        return f"{row.cpu_share:.0%}" if row.cpu_share is not None else "-"

    header = ("", "msgs/s", "ticks/s", "÷ L1 plain", "÷ L1 txn", "bars 1s/1m", "CPU")
    table = [header] + [
        (
            r.name,
            f"{r.msgs_per_s:,.0f}",
            f"{r.ticks_per_s:,.0f}",
            ratio(r, plain),
            ratio(r, txn),
            bars(r),
            cpu(r),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    print("=" * 100)
    print(
        f"mdstream beside its peers — {args.partitions} partitions, commit interval "
        f"{COMMIT_INTERVAL_S:g} s, {os.cpu_count()} CPUs, "
        f"load average {args.load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    print(feed_line)
    print("-" * 100)
    for line in table:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells))
    print("-" * 100)
    for r in rows:
        print(f"{r.name}: {r.detail}")
    path = os.environ.get("PYTHONPATH")
    shown = f"PYTHONPATH={shlex.quote(path)} " if path else ""
    print(f"reproduce: {shown}{reproduce_command(args.argv, 'benchmarks.compare')}")
    print("=" * 100)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="feed seconds (default 60)")
    parser.add_argument(
        "--rate-scale", type=float, default=1.0, help="multiplies every instrument's trade rate"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="cap on each worker row, seconds (default 60)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--include-mdstream", action="store_true", help="add the mdstream worker's row"
    )
    parser.add_argument(
        "--quix-python",
        default=default_quix_python(),
        help="interpreter with quixstreams installed (default .venv-quix/bin/python if present)",
    )
    parser.add_argument("--skip", action="append", default=[], choices=ROWS, help="skip a row")
    parser.add_argument("--keep", action="store_true", help="keep the topics and worker logs")
    args = parser.parse_args(argv)
    args.argv, args.load_before = argv, os.getloadavg()

    bootstrap = ensure_up(only=["kafka"]).kafka_bootstrap
    kafka_pid = KafkaService(ServiceSettings.from_env()).pid()
    root = Path(tempfile.mkdtemp(prefix="mdcompare-"))
    # Every topic and group of the run has this id in its name: one sweep deletes them all.
    run_id = f"cmp-{uuid.uuid4().hex[:8]}"
    owner = Pipeline(bootstrap, args.partitions, root / "mdstream", "mdstream", app_id=run_id)
    raw = owner.topics.raw

    say(f"generating {args.seconds:g}s of feed at rate scale {args.rate_scale:g}")
    messages = list(
        generate(FeedSpec(duration_s=args.seconds, rate_scale=args.rate_scale, seed=args.seed))
    )
    n_msgs, n_ticks = len(messages), sum(m.n_ticks for m in messages)
    per_msg, size = n_ticks / n_msgs, mean_size(messages)
    owner.create_topics()
    t = time.monotonic()
    sent = publish(bootstrap, raw, messages, CONTRACTS)
    publish_s = time.monotonic() - t
    assert sent == n_msgs, (sent, n_msgs)
    feed_line = (
        f"feed: {args.seconds:g} s × rate {args.rate_scale:g} = {n_msgs:,} raw messages, "
        f"{n_ticks:,} ticks ({per_msg:.1f}/msg), mean {size} B; published to {raw} in "
        f"{publish_s:.1f} s"
    )
    say(feed_line)

    rows: list[Row] = []
    workers: list[Pipeline] = []
    failed = False

    def add(
        name: str,
        msgs_per_s: float,
        detail: str,
        bars: dict[str, int] | None = None,
        cpu_share: float | None = None,
    ) -> None:
        rows.append(Row(name, msgs_per_s, msgs_per_s * per_msg, detail, bars, cpu_share))
        say(f"{name}: {msgs_per_s:,.0f} msgs/s")

    try:
        if "l0" not in args.skip:
            records = max(n_msgs, 100_000)
            l0_topic = f"{run_id}.l0"
            rate = l0_produce(bootstrap, l0_topic, records, size, args.partitions)
            add("L0 produce", rate, f"ProducerPerformance, {records:,} records of {size} B")
            rate = l0_consume(bootstrap, l0_topic, records, f"{run_id}-l0")
            add("L0 consume", rate, f"ConsumerPerformance, the same {records:,} records")
        if "l1" not in args.skip:
            for kind in ("plain", "txn"):
                p = run_passthrough(
                    bootstrap,
                    raw,
                    f"{run_id}.l1.{kind}",
                    args.partitions,
                    n_msgs,
                    transactional=kind == "txn",
                    group=f"{run_id}-l1-{kind}",
                    commit_every_s=COMMIT_INTERVAL_S,
                )
                commits = f", {p.commits} commits" if p.commits else ""
                add(
                    f"L1 {kind}",
                    p.msgs_per_s,
                    f"confluent-kafka pass-through, {p.passes} passes, {p.messages:,} msgs in "
                    f"{p.wall_s:.1f} s{commits}",
                    cpu_share=p.cpu_s / p.wall_s if p.cpu_s and p.wall_s else None,
                )
        peers: list[Peer] = []
        if "faust" not in args.skip:
            peers.append(
                FaustPeer(
                    bootstrap,
                    args.partitions,
                    root / "faust",
                    "faust",
                    f"{run_id}-faust",
                    source=raw,
                )
            )
        if "quix" not in args.skip:
            peers.append(
                QuixPeer(
                    bootstrap,
                    args.partitions,
                    root / "quix",
                    "quix",
                    f"{run_id}-quix",
                    source=raw,
                    python=args.quix_python,
                )
            )
        for peer in peers:
            workers.append(peer)
            wall, committed, share = run_peer(peer, n_msgs, args.timeout)
            partial = f" (TIMED OUT at {args.timeout:g} s: partial)" if committed < n_msgs else ""
            add(
                {"faust": "faust per-event", "quix": "Quix Streams"}[peer.label],
                committed / wall,
                f"{committed:,} msgs committed {wall:.1f} s after ready{partial}",
                bars=peer_bars(peer),
                cpu_share=share,
            )
        if args.include_mdstream:
            workers.append(owner)
            tp = run_throughput(owner, messages, args.timeout, kafka_pid, None, publish_s)
            partial = " (TIMED OUT: partial)" if tp.timed_out else ""
            add(
                "mdstream",
                tp.msgs_per_s,
                f"{tp.committed:,} msgs committed {tp.wall_s:.1f} s after ready{partial}; also "
                f"{tp.bars.get('1h', 0)} 1h bars, {tp.alerts} alerts, {tp.dead_letters} dead "
                "letters",
                bars=tp.bars,
                cpu_share=tp.worker_cpu_s / tp.wall_s if tp.worker_cpu_s and tp.wall_s else None,
            )
    except BaseException:
        failed = True
        for w in workers:
            say(f"worker log of {w.app_id} ({w.log_path}):\n{w.log_tail(2000)}")
        raise
    finally:
        for w in workers:
            w.stop_worker()
        if args.keep or failed:
            say(f"kept {root} and the topics of {run_id}")
        else:
            gc.collect()  # idle clients could ask for (and so recreate) topics
            owner.delete_topics()
            shutil.rmtree(root, ignore_errors=True)
    print_table(args, feed_line, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
