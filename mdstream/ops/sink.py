"""Operations of a sink process: its consumer lag from the broker (the sink lag), the probes."""

from __future__ import annotations

import asyncio
import time

from mdstream.ops import metrics
from mdstream.ops.health import HealthReport, ProgressTracker, assess
from mdstream.ops.lag import LagMonitor
from mdstream.ops.server import OpsServer


class SinkOps:
    def __init__(
        self, bootstrap: str, group: str, topic: str, port: int, probe_s: float = 2.0
    ) -> None:
        self.monitor = LagMonitor(bootstrap, group, [topic])
        self.progress = ProgressTracker()
        self.probe_s = probe_s
        self.name = f"{group}:{port}"
        metrics.UP.labels("sink", self.name).set(1)
        self.server = OpsServer(port, health=self.report)

    def report(self) -> HealthReport:
        now = time.monotonic()
        snap, timeout = self.monitor.last, 3 * self.probe_s + 5
        fresh = snap is not None and now - snap.at <= timeout  # outage: unready, not dead
        return assess(
            now=now,
            broker_ok_at=self.monitor.last_ok_at,
            broker_timeout_s=timeout,
            assigned=True,
            stalled=self.progress.stalled(snap.lag, None, now) if fresh and snap else [],
        )

    async def run(self) -> None:
        while True:
            snap = await asyncio.to_thread(self.monitor.probe)
            if snap is not None:
                self.progress.observe(snap.committed, snap.at)
            metrics.READY.labels("sink", self.name).set(1 if self.report().ready else 0)
            await asyncio.sleep(self.probe_s)

    def close(self) -> None:
        self.server.close()
        self.monitor.close()
