"""The faust worker's operations, from the outside: a Sensor, `/metrics` `/healthz` `/readyz`
on faust's web server, the broker lag probe, and table web views routed to the owning worker.

`install(app, ...)` is called once by `mdstream.app`; nothing here changes how events are
processed. The processing step may add per-stage timings with one line each:
`metrics.STAGE_SECONDS.labels("validate").observe(seconds)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Iterable
from typing import Any

import faust
from faust.app.router import Router
from faust.sensors import Sensor
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from mdstream.core.contracts import ContractSet
from mdstream.ops import metrics
from mdstream.ops.health import HealthReport, ProgressTracker, assess
from mdstream.ops.labels import reason_class
from mdstream.ops.lag import LagMonitor

log = logging.getLogger(__name__)

KIND = "worker"


def key_partition(key: bytes, partitions: int) -> int:
    """The partition our producers put `key` in: librdkafka's default `consistent_random`
    partitioner is CRC-32 of the key modulo the partition count (faust's own router assumes
    the Java client's murmur2, which is why the stock web views missed on a second worker)."""
    return zlib.crc32(key) % partitions


class KeyRouter(Router):
    """faust's router, with the partition of a table key computed like our producers do.

    The tables are written in the source partition's transaction, so a key lives in the table
    partition numbered like the raw partition its symbol was published to.
    """

    def key_store(self, table_name: str, key: Any) -> URL:
        table = self._get_table(table_name)
        topic = self._get_table_topic(table)
        raw_key = key.encode() if isinstance(key, str) else bytes(key)
        partition = key_partition(raw_key, table.partitions or self.app.conf.topic_partitions)
        return URL(self._assignor._tps_url[TP(topic, partition)])  # type: ignore[attr-defined]


class PrometheusSensor(Sensor):
    """faust's sensor callbacks → the metrics of `mdstream.ops.metrics`."""

    def __init__(self, contracts: ContractSet, topics: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.contracts = contracts
        self.raw, self.normalized = topics.raw, topics.normalized
        self.alerts, self.dead_letter = topics.alerts, topics.dead_letter
        self._since_commit: list[float] = []  # Kafka timestamps of events handled since commit
        self._ops_in: dict[TP, tuple[Any, Any]] = {}  # per partition: (messages, ticks) children
        self._ops_out: dict[str, Any] = {}  # per topic: the messages-out child

    def _partition_metrics(self, tp: TP) -> tuple[Any, Any]:
        if tp not in self._ops_in:
            labels = (tp.topic, str(tp.partition))
            messages, ticks = metrics.MESSAGES_IN.labels(*labels), metrics.TICKS_IN.labels(*labels)
            self._ops_in[tp] = (messages, ticks)
        return self._ops_in[tp]

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        self._partition_metrics(tp)[0].inc()

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> dict | None:
        message = event.message
        if tp.topic == self.raw:
            self._since_commit.append(message.timestamp)
        return None

    def ticks_in(self, tp: TP, ticks: int) -> None:
        """Ticks of a raw message, counted by the agent that decoded it (decoding it here
        again cost as much as processing it)."""
        self._partition_metrics(tp)[1].inc(ticks)

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.perf_counter()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - state)
        metrics.COMMITS.inc()
        now = time.time()
        metrics.LAST_PROGRESS.set(now)
        pending, self._since_commit = self._since_commit, []
        for stamp in pending:
            metrics.TICK_COMMIT_SECONDS.observe(max(0.0, now - stamp))

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> Any:
        out = self._ops_out.get(topic)
        if out is None:
            out = self._ops_out[topic] = metrics.MESSAGES_OUT.labels(topic)
        out.inc()
        if topic in (self.normalized, self.alerts, self.dead_letter):
            self._count_output(topic, message.value)
        return (topic, time.perf_counter())

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        if state is not None:
            metrics.STAGE_SECONDS.labels("produce").observe(time.perf_counter() - state[1])

    def _count_output(self, topic: str, value: Any) -> None:
        try:
            _, record = self.contracts.decode(bytes(value))
        except Exception:  # not ours to judge; the consumer of that topic will
            return
        if topic == self.normalized:
            metrics.BARS.labels(record.get("interval", "?")).inc()
            score = (record.get("quality_metrics") or {}).get("quality_score")
            if score is not None:
                metrics.QUALITY_SCORE.labels(record["instrument"]["symbol"]).set(score)
        elif topic == self.alerts:
            metrics.ALERTS.labels(record["alert_type"], record["severity"], record["status"]).inc()
        elif topic == self.dead_letter:
            source = record.get("source") or ""
            metrics.DEAD_LETTERS.labels(
                record["stage"], source, reason_class(record["reason"])
            ).inc()

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        metrics.SEND_ERRORS.labels(state[0] if state else "?").inc()

    def on_rebalance_start(self, app: Any) -> dict:
        metrics.REBALANCES.inc()
        return super().on_rebalance_start(app)


def _assigned(app: faust.App, topic: str) -> set[tuple[str, int]] | None:
    try:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic == topic}
    except Exception:  # consumer not started yet
        return None


class WorkerOps:
    """The lag probe (a faust timer, the client call in a thread) and the health decision."""

    def __init__(
        self,
        app: faust.App,
        bootstrap: str,
        group: str,
        topics: Iterable[str],
        stall_s: float,
        probe_s: float,
    ) -> None:
        self.app, self.bootstrap, self.group = app, bootstrap, group
        self.topics = tuple(topics)
        self.probe_s = probe_s
        self.progress = ProgressTracker(stall_s=stall_s)
        self.monitor: LagMonitor | None = None
        self.sensor: PrometheusSensor | None = None
        self.name = f"{app.conf.web_host}:{app.conf.web_port}"

    async def probe(self) -> None:
        if self.monitor is None:
            self.monitor = LagMonitor(self.bootstrap, self.group, self.topics)
        snap = await asyncio.to_thread(self.monitor.probe)
        if snap is not None:
            self.progress.observe(snap.committed, snap.at)
        owned = _assigned(self.app, self.topics[0])
        if owned is not None:
            metrics.ASSIGNED_PARTITIONS.labels(self.topics[0]).set(len(owned))
        metrics.READY.labels(KIND, self.name).set(1 if self.report().ready else 0)

    def report(self) -> HealthReport:
        now = time.monotonic()
        snap = self.monitor.last if self.monitor else None
        owned = _assigned(self.app, self.topics[0])
        consumer = getattr(self.app, "_consumer", None)
        gate = getattr(consumer, "processing_allowed", None)
        assigned = (
            owned is not None and not self.app.rebalancing and (gate is None or gate.is_set())
        )
        timeout = 3 * self.probe_s + 5
        # Stalled is judged on a fresh view only: a broker outage makes us unready, not dead.
        fresh = snap is not None and now - snap.at <= timeout
        stalled = self.progress.stalled(snap.lag, owned, now) if fresh and snap else []
        return assess(
            now=now,
            broker_ok_at=self.monitor.last_ok_at if self.monitor else None,
            broker_timeout_s=timeout,
            assigned=assigned,
            stalled=stalled,
        )


def install(
    app: faust.App,
    contracts: ContractSet,
    topics: Any,
    bootstrap: str,
    group: str,
    *,
    stall_s: float = 30.0,
    probe_s: float = 2.0,
) -> WorkerOps:
    """Register the sensor, the pages and the lag probe on `app` (before it starts)."""
    sensor = PrometheusSensor(contracts, topics)
    app.sensors.add(sensor)
    ops = WorkerOps(app, bootstrap, group, [topics.raw], stall_s, probe_s)
    ops.sensor = sensor
    metrics.UP.labels(KIND, ops.name).set(1)
    metrics.watch_disk(app.conf.datadir)

    @app.page("/metrics")
    async def metrics_page(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(self: faust.web.View, request: faust.web.Request) -> Any:
        report = ops.report()
        return self.json(report.as_json(), status=200 if report.live else 503)

    @app.page("/readyz")
    async def readyz(self: faust.web.View, request: faust.web.Request) -> Any:
        report = ops.report()
        return self.json(report.as_json(), status=200 if report.ready else 503)

    @app.timer(probe_s, name="mdstream-ops-lag-probe")
    async def lag_probe() -> None:
        await ops.probe()

    return ops
