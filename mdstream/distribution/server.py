"""`mdstream serve`: the WebSocket feed and the live page (aiohttp), fed from the committed Kafka
outputs (bars, consensus, alerts; `read_committed`).

- `/` the live page (candles, latest prices, alerts), `/ws` the WebSocket (see `fanout` for the
  frames), `/health` a JSON status.
- Loopback by default (`--host`); with a token (`MDSTREAM_WS_TOKEN` or `MDSTREAM_WS_TOKEN_FILE`)
  every `/ws` connection must present it (`?token=` or `Authorization: Bearer`), else HTTP 401.
- One Kafka reader thread feeds an asyncio hub; every client has its own conflating queue and
  sender task, so a slow client gets the newest values (or is disconnected) and nobody waits.
- A new subscriber first gets a snapshot: the recent bars of what it asked for and the latest
  prices, so a page shows candles at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from confluent_kafka import Consumer, TopicPartition

from mdstream.core.contracts import ALERT, CONSENSUS, NORMALIZED, ContractSet, DecodeError
from mdstream.distribution.fanout import (
    BadRequest,
    Conflator,
    Subscription,
    TooSlow,
    parse_request,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")


def to_messages(contract: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Server frames for one committed record (none for other contracts)."""
    if contract == NORMALIZED:
        o = record["ohlcv"]
        return [{
            "type": "bar", "id": record["eventId"], "instrument": record["instrument"]["symbol"],
            "timeframe": record["interval"],
            "bar": {"start_ns": record["window_start"], "open": o["open"], "high": o["high"],
                    "low": o["low"], "close": o["close"], "volume": o["volume"],
                    "vwap": o["vwap"], "trades": o["trade_count"],
                    "revision": record["revision"]},
        }]  # fmt: skip
    if contract == CONSENSUS:
        return [{
            "type": "latest", "id": record["eventId"], "instrument": record["instrument"],
            "latest": {"price": record["price"], "p25": record["p25"], "p75": record["p75"],
                       "providers": record["providers"], "as_of_ns": record["as_of"]},
        }]  # fmt: skip
    if contract == ALERT:
        return [{
            "type": "alert", "id": record["eventId"], "instrument": record["instrument"],
            "alert": {"alert_type": str(record["alert_type"]), "severity": str(record["severity"]),
                      "status": str(record["status"]), "source": record["source"],
                      "description": record["description"], "ts_ns": record["timestamp"]},
        }]  # fmt: skip
    return []


@dataclass(eq=False)  # identity: clients live in a set
class Client:
    ws: web.WebSocketResponse
    conflator: Conflator
    subscription: Subscription = field(default_factory=Subscription)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0


class Hub:
    """The newest state for snapshots, and every client's queue."""

    def __init__(
        self, known: Iterable[str] | None, timeframes: Sequence[str], history: int = 300
    ) -> None:
        self.known: set[str] | None = set(known) if known is not None else None
        self.timeframes = tuple(timeframes)
        self.history = history
        self.bars: dict[tuple[str, str], deque] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.alerts: deque = deque(maxlen=100)
        self.clients: set[Client] = set()
        self.published = 0
        self.dropped_clients = 0

    def _remember(self, message: dict[str, Any]) -> None:
        instrument = message["instrument"]
        if self.known is not None:
            self.known.add(instrument)
        kind = message["type"]
        if kind == "bar":
            window = self.bars.setdefault(
                (instrument, message["timeframe"]), deque(maxlen=self.history)
            )
            start = message["bar"]["start_ns"]
            # A correction replaces its window; bars arrive in window order per instrument.
            while window and window[-1]["bar"]["start_ns"] >= start:
                if window[-1]["bar"]["start_ns"] == start:
                    window.pop()
                    break
                return  # older than what we show: a replay
            window.append(message)
        elif kind == "latest":
            current = self.latest.get(instrument)
            if current is None or current["latest"]["as_of_ns"] <= message["latest"]["as_of_ns"]:
                self.latest[instrument] = message
        else:
            self.alerts.append(message)

    def publish(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self._remember(message)
            text = json.dumps(message, separators=(",", ":"))
            for client in list(self.clients):
                if client.subscription.wants(message):
                    try:
                        client.conflator.put(message, text)
                    except TooSlow:
                        self.drop(client, "too slow")
                        continue
                    client.wake.set()
        self.published += len(messages)

    def drop(self, client: Client, why: str) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.dropped_clients += 1
            log.info("ws: disconnecting a client (%s)", why)
            asyncio.get_running_loop().create_task(
                client.ws.close(code=1013, message=why.encode()[:100])
            )
        client.wake.set()

    def snapshot(self, subscription: Subscription) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for (_instrument, tf), window in self.bars.items():
            if tf in subscription.timeframes and subscription.wants(window[-1]):
                out += list(window)
        out += [m for m in self.latest.values() if subscription.wants(m)]
        out += [m for m in self.alerts if subscription.wants(m)]
        return out


class KafkaFeed(threading.Thread):
    """The committed outputs → the hub, from `backlog` records before each partition's end."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        contracts: ContractSet,
        loop: asyncio.AbstractEventLoop,
        hub: Hub,
        backlog: int = 2000,
    ) -> None:
        super().__init__(daemon=True, name="ws-kafka-feed")
        self.bootstrap, self.topics, self.contracts = bootstrap, list(topics), contracts
        self.loop, self.hub, self.backlog = loop, hub, backlog
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "mdstream-serve",
             "isolation.level": "read_committed", "enable.auto.commit": False,
             "fetch.wait.max.ms": 5, "fetch.min.bytes": 1}
        )  # fmt: skip
        try:
            meta = consumer.list_topics(timeout=30).topics
            assignment = []
            for topic in self.topics:
                for p in meta[topic].partitions if topic in meta else ():
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
                    assignment.append(TopicPartition(topic, p, max(high - self.backlog, low)))
            consumer.assign(assignment)
            self.ready.set()
            while not self.stopping.is_set():
                batch = consumer.consume(1000, 0.05)
                messages: list[dict[str, Any]] = []
                for msg in batch:
                    if msg.error():
                        log.warning("ws feed: %s", msg.error())
                        continue
                    try:
                        name, record = self.contracts.decode(msg.value())
                    except DecodeError:
                        continue
                    messages += to_messages(name, record)
                if messages:
                    self.loop.call_soon_threadsafe(self.hub.publish, messages)
        except BaseException as exc:
            self.error = exc
            log.exception("ws feed stopped")
            self.ready.set()
        finally:
            consumer.close()


class LiveServer:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        contracts: ContractSet | None = None,
        known_instruments: Iterable[str] | None = None,
        timeframes: Sequence[str] = ("1s", "1m"),
        token: str | None = None,
        max_pending: int = 5000,
        send_timeout: float = 5.0,
        backlog: int = 2000,
    ) -> None:
        self.bootstrap, self.topics = bootstrap, list(topics)
        self.contracts = contracts or ContractSet.load()
        self.hub = Hub(known_instruments, timeframes)
        self.token = token
        self.max_pending, self.send_timeout, self.backlog = max_pending, send_timeout, backlog
        self.feed: KafkaFeed | None = None
        self.app = web.Application()
        self.app.add_routes([
            web.get("/", self._index), web.get("/ws", self._ws), web.get("/health", self._health),
            web.static("/static", STATIC),
        ])  # fmt: skip
        self.app.on_startup.append(self._start_feed)
        self.app.on_cleanup.append(self._stop_feed)

    async def _start_feed(self, app: web.Application) -> None:
        self.feed = KafkaFeed(self.bootstrap, self.topics, self.contracts,
                              asyncio.get_running_loop(), self.hub, self.backlog)  # fmt: skip
        self.feed.start()
        await asyncio.to_thread(self.feed.ready.wait, 60)
        if self.feed.error is not None:
            raise RuntimeError(f"cannot read the Kafka outputs: {self.feed.error}")

    async def _stop_feed(self, app: web.Application) -> None:
        if self.feed is not None:
            self.feed.stopping.set()
            await asyncio.to_thread(self.feed.join, 10)
        for client in list(self.hub.clients):
            await client.ws.close(code=1001, message=b"server shutdown")

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "clients": len(self.hub.clients), "published": self.hub.published,
            "dropped_clients": self.hub.dropped_clients,
            "feed_alive": bool(self.feed and self.feed.is_alive()),
        })  # fmt: skip

    def _authorised(self, request: web.Request) -> bool:
        if not self.token:
            return True
        given = request.query.get("token", "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :]
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(status=401, text="a valid token is required\n")
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=65536)
        await ws.prepare(request)
        client = Client(ws, Conflator(self.max_pending))
        self.hub.clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        await self._error(ws, "binary frames are not accepted; send JSON text")
                    continue
                try:
                    req = parse_request(msg.data, self.hub.known, self.hub.timeframes)
                except BadRequest as exc:
                    await self._error(ws, str(exc))
                    continue
                if req.op == "ping":
                    await ws.send_str('{"type":"pong"}')
                    continue
                client.subscription.apply(req)
                await ws.send_str(json.dumps({
                    "type": "subscribed", "instruments": sorted(client.subscription.instruments),
                    "timeframes": sorted(client.subscription.timeframes),
                    "channels": sorted(client.subscription.channels),
                }))  # fmt: skip
                if req.op == "subscribe":
                    for m in self.hub.snapshot(client.subscription):
                        with contextlib.suppress(TooSlow):
                            client.conflator.put(m, json.dumps(m, separators=(",", ":")))
                    client.wake.set()
        finally:
            self.hub.clients.discard(client)
            client.wake.set()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _error(self, ws: web.WebSocketResponse, error: str) -> None:
        await ws.send_str(json.dumps({"type": "error", "error": error}))

    async def _sender(self, client: Client) -> None:
        while client in self.hub.clients and not client.ws.closed:
            await client.wake.wait()
            client.wake.clear()
            while texts := client.conflator.take(500):
                try:
                    for text in texts:
                        await asyncio.wait_for(client.ws.send_str(text), self.send_timeout)
                        client.sent += 1
                except (TimeoutError, ConnectionError):
                    self.hub.drop(client, "send timed out")
                    return

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("serving the live page on http://%s:%d/", host, port)
        if ready is not None:
            ready.set()
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            await runner.cleanup()


def read_token(env: Mapping[str, str]) -> str | None:
    """MDSTREAM_WS_TOKEN, or the contents of MDSTREAM_WS_TOKEN_FILE (never logged)."""
    if env.get("MDSTREAM_WS_TOKEN"):
        return env["MDSTREAM_WS_TOKEN"]
    path = env.get("MDSTREAM_WS_TOKEN_FILE")
    return Path(path).read_text().strip() if path else None
