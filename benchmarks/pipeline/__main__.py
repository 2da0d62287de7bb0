"""`python -m benchmarks.pipeline`: the phases in order on one broker, then the report.

The command line and the run's lifecycle (Kafka up, one app per phase, workers stopped, topics and
temp dirs removed unless kept or failed) are here so the phase modules only measure.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import pipeline
from benchmarks.pipeline.ceiling import Passthrough, run_passthrough, run_recompute
from benchmarks.pipeline.harness import CONTRACTS, Pipeline, say
from benchmarks.pipeline.latency import run_latency
from benchmarks.pipeline.report import pct, report
from benchmarks.pipeline.throughput import run_throughput
from mdstream.bus.kafka import publish
from mdstream.core.processor import RawMessage
from mdstream.core.simulate import FeedSpec, generate
from mdstream.services import Settings as ServiceSettings
from mdstream.services import ensure_up
from mdstream.services.kafka import KafkaService


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description=pipeline.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="feed seconds pre-published for the throughput runs (default 60)",
    )
    parser.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="multiplies every instrument's trade rate (default 1)",
    )
    parser.add_argument("--partitions", type=int, default=4, help="raw/output partitions")
    parser.add_argument(
        "--live-seconds",
        type=float,
        default=30.0,
        help="length of the paced live feed of the latency run (default 30)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="live-feed seconds whose bars are left out of the latency figures",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="give up waiting for the throughput worker after this (s)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["throughput", "latency", "ceiling"],
        help="skip a phase",
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy the workers of phases 1 and 2 (raw stacks to PREFIX.<phase>.txt) and print "
        "their top functions; sampling costs the worker a little CPU",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the topics and the temp dir (worker logs, data dirs)",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    args.t0, args.load_before = time.monotonic(), os.getloadavg()

    say("starting Kafka (ensure_up only=['kafka'])")
    endpoints = ensure_up(only=["kafka"])
    bootstrap = endpoints.kafka_bootstrap
    kafka_pid = KafkaService(ServiceSettings.from_env()).pid()
    say(f"Kafka at {bootstrap} (pid {kafka_pid})")

    root = Path(tempfile.mkdtemp(prefix="mdbench-"))

    def profile_path(phase: str) -> Path | None:
        return Path(f"{args.profile}.{phase}.txt").absolute() if args.profile else None

    pipelines: list[Pipeline] = []
    tp = lat = None
    passes: list[Passthrough] = []
    recomputed = None
    failed = False
    try:
        raw_pipe = Pipeline(bootstrap, args.partitions, root / "throughput", "tp")
        pipelines.append(raw_pipe)
        feed = FeedSpec(duration_s=args.seconds, rate_scale=args.rate_scale, seed=args.seed)
        say(f"generating {args.seconds:g}s of feed at rate scale {args.rate_scale:g}")
        messages = list(generate(feed))
        if "throughput" not in args.skip:
            say(f"phase 1: throughput ({raw_pipe.app_id})")
            tp = run_throughput(
                raw_pipe,
                messages,
                args.timeout,
                kafka_pid,
                profile_path("throughput"),
            )
            say(f"phase 1 done: {tp.msgs_per_s:,.0f} raw msgs/s")
        else:
            raw_pipe.create_topics()
            publish(bootstrap, raw_pipe.topics.raw, messages, CONTRACTS)

        if "latency" not in args.skip:
            live = Pipeline(bootstrap, args.partitions, root / "latency", "lat")
            pipelines.append(live)
            say(f"phase 2: latency ({live.app_id})")
            lat = run_latency(
                live,
                args.live_seconds,
                args.rate_scale,
                args.warmup,
                args.seed,
                profile_path("latency"),
            )
            say(f"phase 2 done: p50 {pct(lat.total_ms, 50):.0f} ms over {lat.bars} bars")

        if "ceiling" not in args.skip:
            say("phase 3: ceiling")
            kept: list[RawMessage] = []

            def keep(msg: Any) -> None:
                kept.append(
                    RawMessage(msg.value(), msg.key(), msg.topic(), msg.partition(), msg.offset())
                )

            for transactional in (False, True):
                kind = "txn" if transactional else "plain"
                passes.append(
                    run_passthrough(
                        bootstrap,
                        raw_pipe.topics.raw,
                        f"{raw_pipe.app_id}.ceiling.{kind}",
                        args.partitions,
                        len(messages),
                        transactional=transactional,
                        group=f"{raw_pipe.app_id}-ceiling-{kind}",
                        keep=None if transactional else keep,
                    )
                )
                say(f"  {kind}: {passes[-1].msgs_per_s:,.0f} msgs/s")
            secs, n_out = run_recompute(kept)
            recomputed = (secs, n_out, len(kept))
            say(f"  in-process step: {len(kept) / secs:,.0f} msgs/s")
    except BaseException:
        failed = True
        for pipe in pipelines:
            if pipe.proc is not None:
                say(f"worker log of {pipe.app_id} ({pipe.log_path}):\n{pipe.log_tail(2000)}")
        raise
    finally:
        for pipe in pipelines:
            pipe.stop_worker()
        if tp is not None and tp.timed_out:
            failed = True  # keep the logs
        if not args.keep and not failed:
            gc.collect()  # destroy idle Kafka clients, which could ask for (and so recreate) topics
            for pipe in pipelines:
                try:
                    pipe.delete_topics()
                except Exception as exc:  # best effort: a dedicated bench broker anyway
                    say(f"could not delete topics of {pipe.app_id}: {exc!r}")
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"kept {root} (worker logs and data dirs)")
    report(args, tp, lat, passes, recomputed)
    for phase, result in (("throughput", tp), ("latency", lat)):
        if result is not None and result.profile:
            print(f"py-spy of the {phase} worker ({profile_path(phase)}):")
            for line in result.profile:
                print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
