"""The WebSocket feed: request validation and conflation (pure), then `mdstream serve` on the real
Kafka: subscriptions, error frames, the token, and a slow client that slows nobody."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from mdstream.bus.kafka import ensure_topics
from mdstream.core.contracts import ALERT, CONSENSUS, NORMALIZED, ContractSet
from mdstream.distribution.fanout import (
    BadRequest,
    Conflator,
    Subscription,
    TooSlow,
    parse_request,
)
from mdstream.services import Endpoints, ensure_up
from mdstream.settings import Topics
from tests.distribution_support import (
    T0,
    Process,
    TransactionalFeed,
    alert,
    bar,
    consensus,
    encode_all,
    stack_env,
)
from tests.workers import free_port

CS = ContractSet.load()
KNOWN = ["AAPL", "MSFT"]
TF = ("1s", "1m")


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{nope", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"op": "dance"}', "unknown op"),
        ('{"op": "subscribe", "instruments": "AAPL"}', "list of non-empty strings"),
        ('{"op": "subscribe", "instruments": ["TSLAX"]}', "unknown instruments"),
        ('{"op": "subscribe", "instruments": ["AAPL"], "timeframes": ["7s"]}', "timeframes"),
        ('{"op": "subscribe", "instruments": ["AAPL"], "channels": ["gossip"]}', "channels"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(frame: str, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        parse_request(frame, KNOWN, TF)


def test_subscription_selects_instrument_timeframe_and_channel() -> None:
    sub = Subscription()
    sub.apply(parse_request('{"op":"subscribe","instruments":["AAPL"],"timeframes":["1s"]}',
                            KNOWN, TF))  # fmt: skip
    b = {"type": "bar", "instrument": "AAPL", "timeframe": "1s", "bar": {"start_ns": 1}}
    assert sub.wants(b)
    assert not sub.wants({**b, "timeframe": "1m"})
    assert not sub.wants({**b, "instrument": "MSFT"})
    assert sub.wants({"type": "alert", "instrument": "AAPL", "id": "x"})
    sub.apply(parse_request('{"op":"unsubscribe","instruments":["AAPL"]}', KNOWN, TF))
    assert not sub.wants(b)


def test_a_slow_client_gets_the_newest_value_per_key_or_is_dropped() -> None:
    c = Conflator(max_pending=3)
    for close in (1.0, 2.0, 3.0):  # the same window three times (corrections): one is kept
        m = {"type": "bar", "instrument": "AAPL", "timeframe": "1s", "bar": {"start_ns": 5}}
        c.put(m, f"close={close}")
    c.put({"type": "latest", "instrument": "AAPL"}, "latest")
    assert c.take() == ["close=3.0", "latest"] and c.conflated == 2
    for i in range(3):
        c.put({"type": "alert", "instrument": "AAPL", "id": str(i)}, str(i))
    with pytest.raises(TooSlow):
        c.put({"type": "alert", "instrument": "AAPL", "id": "3"}, "3")


@pytest.fixture(scope="module")
def stack() -> Endpoints:
    return ensure_up(only=["kafka"])


async def _frames(ws: aiohttp.ClientWebSocketResponse, until, timeout: float = 60) -> list[dict]:
    out: list[dict] = []
    async with asyncio.timeout(timeout):
        while not until(out):
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            out.append(json.loads(msg.data))
    return out


@pytest.mark.services
@pytest.mark.timeout(180)
async def test_serve_feeds_subscribers_validates_and_protects(
    stack: Endpoints, tmp_path: Path
) -> None:
    app_id = f"w{uuid.uuid4().hex[:10]}"
    topics = Topics.with_prefix(f"{app_id}.")
    ensure_topics(stack.kafka_bootstrap, (topics.normalized, topics.consensus, topics.alerts), 2)
    port = free_port()
    env = stack_env(stack, app_id, MDSTREAM_SERVE_PORT=str(port), MDSTREAM_WS_TOKEN="s3cret")
    server = Process(["serve"], env, tmp_path / "serve.log")
    server.start()
    n_windows = 3000
    pairs = []
    for w in range(n_windows):
        ts = T0 + w * 10**9
        for i, s in enumerate(KNOWN):
            pairs.append((topics.normalized, NORMALIZED, bar(s, ts, 100.0 + i + w / 1000)))
        if w % 100 == 0:
            pairs.append((topics.consensus, CONSENSUS, consensus("AAPL", 100.0 + w / 1000, ts)))
            pairs.append((topics.alerts, ALERT, alert("AAPL", "HIGH", ts)))
    feed = TransactionalFeed(stack.kafka_bootstrap, encode_all(CS, pairs), rate=3000,
                             size=50, txn_id=f"{app_id}-feed")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # until it listens
                try:
                    async with http.get(f"{base}/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert server.alive(), server.log_text()[-3000:]
                await asyncio.sleep(0.2)
            async with http.get(f"{base}/") as r:
                assert r.status == 200 and "mdstream live" in await r.text()
            # No token, or a wrong one: refused before any upgrade.
            for url in (f"{base}/ws", f"{base}/ws?token=wrong"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(url)
                assert refused.value.status == 401

            fast = await http.ws_connect(f"{base}/ws?token=s3cret")
            slow = await http.ws_connect(
                f"{base}/ws", headers={"Authorization": "Bearer s3cret"}, max_msg_size=0
            )
            # Bad frames get error frames and the connection stays usable.
            await fast.send_str("{not json")
            await fast.send_str('{"op":"subscribe","instruments":["NOPE"]}')
            await fast.send_bytes(b"\x00")
            errors = await _frames(fast, lambda f: len(f) == 3)
            assert [f["type"] for f in errors] == ["error"] * 3
            assert "unknown instruments" in errors[1]["error"]
            await fast.send_str('{"op":"ping"}')
            assert (await _frames(fast, lambda f: len(f) == 1))[0]["type"] == "pong"

            sub = {"op": "subscribe", "instruments": ["AAPL"], "timeframes": ["1s"]}
            await fast.send_str(json.dumps(sub))
            await slow.send_str(json.dumps({**sub, "instruments": ["AAPL", "MSFT"]}))
            feed.start()  # the slow client now reads nothing while the feed runs
            last = T0 + (n_windows - 1) * 10**9
            got = await _frames(
                fast,
                lambda f: any(m["type"] == "bar" and m["bar"]["start_ns"] == last for m in f),
                timeout=120,
            )
            bars = [m["bar"]["start_ns"] for m in got if m["type"] == "bar"]
            assert all(m["instrument"] == "AAPL" for m in got if m["type"] != "subscribed")
            assert bars == sorted(bars) and len(bars) == len(set(bars)) == n_windows
            assert {m["type"] for m in got} >= {"subscribed", "bar", "latest", "alert"}
            feed.join(60)
            assert feed.error is None
            # The slow client, reading at last, ends on the newest values (conflated or not).
            later = await _frames(
                slow,
                lambda f: sum(m["type"] == "bar" and m["bar"]["start_ns"] == last for m in f) == 2,
                timeout=60,
            )
            newest = {m["instrument"]: m["bar"]["close"] for m in later if m["type"] == "bar"}
            assert newest == {"AAPL": 100.0 + (n_windows - 1) / 1000,
                              "MSFT": 101.0 + (n_windows - 1) / 1000}  # fmt: skip
            await fast.close()
            await slow.close()
            async with http.get(f"{base}/health") as r:
                health = await r.json()
            assert health["feed_alive"] and health["published"] >= len(pairs)
        assert server.alive()
        assert "s3cret" not in server.log_text()
    finally:
        if server.alive():
            server.kill()
