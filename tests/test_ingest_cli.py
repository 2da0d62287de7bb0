"""`mdstream ingest` end to end (a subprocess against an emulator) and credential loading."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from emulators.alpaca import AlpacaEmulator
from mdstream.bus.kafka import read_all
from mdstream.core.contracts import RAW_BATCH, ContractSet
from mdstream.ingest.credentials import MissingCredential, read_secret
from mdstream.services import Endpoints
from mdstream.settings import Topics


def test_secret_from_env_or_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("from-file\n")
    assert read_secret("X_KEY", {"MDSTREAM_X_KEY": " from-env "}) == "from-env"
    assert read_secret("X_KEY", {"MDSTREAM_X_KEY_FILE": str(secret_file)}) == "from-file"
    with pytest.raises(MissingCredential, match="MDSTREAM_X_KEY or MDSTREAM_X_KEY_FILE"):
        read_secret("X_KEY", {})
    with pytest.raises(MissingCredential, match="cannot be read"):
        read_secret("X_KEY", {"MDSTREAM_X_KEY_FILE": str(tmp_path / "missing")})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _probes_when_ready(port: int, timeout_s: float = 30) -> tuple[dict, str]:
    """Poll /readyz until it answers 200; then the /metrics exposition."""

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status, body = await asyncio.to_thread(get, "/readyz")
        if status == 200:
            return json.loads(body), (await asyncio.to_thread(get, "/metrics"))[1].decode()
        assert asyncio.get_running_loop().time() < deadline, f"never ready: {status} {body!r}"
        await asyncio.sleep(0.2)


@pytest.mark.services
@pytest.mark.timeout(120)
async def test_ingest_command_streams_an_emulator_into_the_raw_topic(
    services: Endpoints, tmp_path: Path
) -> None:
    prefix = f"test-ingest-cli-{uuid.uuid4().hex[:8]}."
    key_file = tmp_path / "alpaca-key"
    key_file.write_text("cli-key")
    env = {
        **os.environ,
        "MDSTREAM_TOPIC_PREFIX": prefix,
        "MDSTREAM_ALPACA_API_KEY_FILE": str(key_file),
        "MDSTREAM_ALPACA_API_SECRET": "cli-secret",
    }
    env.pop("MDSTREAM_ALPACA_API_KEY", None)
    async with AlpacaEmulator(api_key="cli-key", secret="cli-secret", budget=120) as emu:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mdstream.cli",
            "ingest",
            "--provider",
            "alpaca",
            "--symbols",
            "AAPL,MSFT",
            "--url",
            emu.ws_url,
            "--seconds",
            "6",
            "--metrics-port",
            str(metrics_port := _free_port()),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        probes = asyncio.create_task(_probes_when_ready(metrics_port))
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        ready, exposition = await probes
    assert proc.returncode == 0, err.decode()[-2000:]
    # its probes: ready once connected and the broker answered the throttle's lag probe
    assert set(ready["checks"].values()) == {"ok"} and "provider" in ready["checks"]
    assert 'mdstream_ingest_connected{provider="alpaca"} 1.0' in exposition
    assert 'mdstream_throttle_level{provider="alpaca"} 0.0' in exposition
    assert "alpaca:" in out.decode() and "0 reconnects" in out.decode()
    assert b"cli-key" not in err and b"cli-secret" not in err
    contracts = ContractSet.load()
    topics = Topics.with_prefix(prefix)
    ticks = Counter()
    for rec in read_all(services.kafka_bootstrap, [topics.raw], idle_s=1.0):
        name, batch = contracts.decode(rec.value)
        assert name == RAW_BATCH and batch["source"] == "alpaca"
        for t in batch["ticks"]:
            ticks[(batch["instrument"]["symbol"], t["kind"], t["timestamp"])] += 1
    assert len(emu.sent) == 120
    assert ticks == Counter((t.symbol, t.kind, t.ts_ns) for t in emu.sent)


@pytest.mark.services
@pytest.mark.timeout(120)
async def test_ingest_command_opens_the_redis_breaker_and_raises_source_unavailable(
    services: Endpoints,
) -> None:
    """A provider that refuses every connection: after the breaker's threshold of failures it
    opens (in Redis, for every process) and one CRITICAL SOURCE_UNAVAILABLE reaches the alerts
    topic and its severity topic."""
    prefix = f"test-ingest-breaker-{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "MDSTREAM_TOPIC_PREFIX": prefix,
        "MDSTREAM_APP_ID": prefix,
        "MDSTREAM_ALPACA_API_KEY": "k",
        "MDSTREAM_ALPACA_API_SECRET": "s",
    }
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"ws://127.0.0.1:{s.getsockname()[1]}/v2/iex"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mdstream.cli", "ingest", "--provider", "alpaca",
        "--symbols", "AAPL", "--url", dead_url, "--seconds", "15",
        "--redis-url", services.redis_url,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    topics = Topics.with_prefix(prefix)
    contracts = ContractSet.load()
    alerts = [
        (rec.topic, contracts.decode(rec.value)[1])
        for rec in read_all(
            services.kafka_bootstrap, [topics.alerts, topics.alerts + ".critical"], idle_s=1.0
        )
    ]
    raised = [(t, a) for t, a in alerts if a["alert_type"] == "SOURCE_UNAVAILABLE"]
    assert {t for t, _ in raised} == {topics.alerts, topics.alerts + ".critical"}, alerts
    assert {(a["source"], a["status"], a["severity"]) for _, a in raised} == {
        ("alpaca", "RAISED", "CRITICAL")
    }
    redis = Redis.from_url(services.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:breaker:alpaca*")]
        assert keys, "the breaker keeps its state in Redis"
    finally:
        await redis.delete(*keys)
        await redis.aclose()
