"""Alpaca market data v2: websocket (`success` connected → `auth` → `success` authenticated or
error 402; error 406 for a second connection; `subscription` acks; arrays of `t`/`q` messages with
RFC-3339 nanosecond times; websocket pings) and REST `/v2/stocks/{symbol}/bars` with
`next_page_token` pagination and a scripted 429 storm with Retry-After."""

from __future__ import annotations

import base64
import json
import random
import time
from datetime import UTC, datetime

from aiohttp import web

from emulators.core import Connection, Emulator, SentTick


def rfc3339_ns(ts_ns: int) -> str:
    seconds, frac = divmod(ts_ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def _parse_time(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


class AlpacaEmulator(Emulator):
    provider = "alpaca"

    def __init__(
        self,
        *,
        secret: str = "test-secret",
        symbol_limit: int | None = None,
        rest_429_first: int = 0,
        retry_after_s: float = 0.2,
        page_size: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.secret = secret
        self.symbol_limit = symbol_limit
        self.rest_429_first = rest_429_first
        self.retry_after_s = retry_after_s
        self.page_size = page_size
        self.authenticated: list[Connection] = []
        self.errors_sent: list[int] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/{feed}", self._ws)
        app.router.add_get("/v2/stocks/{symbol}/bars", self._bars)

    @property
    def ws_url(self) -> str:
        return f"{self.ws_base}/v2/iex"

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        conn = Connection(ws)
        await conn.send(json.dumps([{"T": "success", "msg": "connected"}]))
        try:
            await self.serve(conn, self._on_message)
        finally:
            if conn in self.authenticated:
                self.authenticated.remove(conn)
        return ws

    async def _error(self, conn: Connection, code: int, msg: str) -> None:
        self.errors_sent.append(code)
        await conn.send(json.dumps([{"T": "error", "code": code, "msg": msg}]))

    async def _on_message(self, conn: Connection, text: str) -> bool:
        try:
            msg = json.loads(text)
            action = msg["action"]
        except (ValueError, KeyError, TypeError):
            await self._error(conn, 400, "invalid syntax")
            return True
        if action == "auth":
            if msg.get("key") != self.api_key or msg.get("secret") != self.secret:
                await self._error(conn, 402, "auth failed")
                return False
            if self.authenticated:
                await self._error(conn, 406, "connection limit exceeded")
                return False
            self.authenticated.append(conn)
            await conn.send(json.dumps([{"T": "success", "msg": "authenticated"}]))
            return True
        if conn not in self.authenticated:
            await self._error(conn, 401, "not authenticated")
            return True
        symbols = set(msg.get("trades", [])) | set(msg.get("quotes", []))
        if action == "subscribe":
            if self.symbol_limit is not None and len(conn.symbols | symbols) > self.symbol_limit:
                await self._error(conn, 405, "symbol limit exceeded")
                return True
            conn.symbols |= symbols
            self.subscribe_requests.append(sorted(symbols))
        elif action == "unsubscribe":
            conn.symbols -= symbols
        else:
            await self._error(conn, 400, "invalid syntax")
            return True
        current = sorted(conn.symbols)
        ack = {
            "T": "subscription",
            "trades": current,
            "quotes": current,
            "bars": [],
            "updatedBars": [],
            "dailyBars": [],
            "statuses": [],
            "lulds": [],
            "corrections": current,
            "cancelErrors": current,
        }
        await conn.send(json.dumps([ack]))
        return True

    def encode(self, ticks: list[SentTick], sentinel: bool) -> str:
        out = []
        for i, t in enumerate(ticks):
            stamp = rfc3339_ns(t.ts_ns)
            if t.kind == "TRADE":
                out.append(
                    {
                        "T": "t",
                        "S": t.symbol,
                        "i": len(self.sent) + i,
                        "x": "V",
                        "p": t.price,
                        "s": t.size,
                        "t": stamp,
                        "c": ["@"],
                        "z": "C",
                    }
                )
            else:
                out.append(
                    {
                        "T": "q",
                        "S": t.symbol,
                        "bx": "V",
                        "bp": t.bid,
                        "bs": 1,
                        "ax": "V",
                        "ap": t.ask,
                        "as": 1,
                        "t": stamp,
                        "c": ["R"],
                        "z": "C",
                    }
                )
        if sentinel and ticks:
            out.append(
                {
                    "T": "t",
                    "S": ticks[0].symbol,
                    "i": 0,
                    "x": "V",
                    "p": -1,
                    "s": 1,
                    "t": rfc3339_ns(ticks[0].ts_ns),
                    "c": ["@"],
                    "z": "C",
                }
            )
        return json.dumps(out)

    # --- REST ---------------------------------------------------------------------------------

    async def _bars(self, request: web.Request) -> web.Response:
        h = request.headers
        if h.get("APCA-API-KEY-ID") != self.api_key or h.get("APCA-API-SECRET-KEY") != self.secret:
            status, response = 403, web.json_response({"message": "forbidden."}, status=403)
        elif len(self.rest_requests) < self.rest_429_first:
            status = 429
            response = web.json_response(
                {"message": "too many requests."},
                status=429,
                headers={"Retry-After": f"{self.retry_after_s:g}"},
            )
        else:
            status, response = 200, self._bars_page(request)
        self.rest_requests.append((time.monotonic(), request.path, status))
        return response

    def _bars_page(self, request: web.Request) -> web.Response:
        q, symbol = request.query, request.match_info["symbol"]
        if q.get("timeframe") != "1Min":
            return web.json_response({"message": "emulator serves 1Min bars"}, status=422)
        start, end = _parse_time(q["start"]), _parse_time(q["end"])
        minutes = [
            m
            for m in range(-(-start // 60) * 60, end, 60)
            if random.Random(f"{symbol}:{m}").random() > 0.1
        ]  # some minutes: no trades
        offset = int(base64.b64decode(q["page_token"])) if q.get("page_token") else 0
        limit = min(int(q.get("limit", "1000")), self.page_size)
        bars = []
        for m in minutes[offset : offset + limit]:
            rng = random.Random(f"{symbol}:{m}")
            o = round(rng.uniform(100, 110), 2)
            c = round(o + rng.uniform(-1, 1), 2)
            bars.append(
                {
                    "t": datetime.fromtimestamp(m, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "o": o,
                    "h": round(max(o, c) + 0.1, 2),
                    "l": round(min(o, c) - 0.1, 2),
                    "c": c,
                    "v": rng.randint(100, 5000),
                    "n": rng.randint(1, 60),
                    "vw": round((o + c) / 2, 4),
                }
            )
        more = offset + limit < len(minutes)
        token = base64.b64encode(str(offset + limit).encode()).decode() if more else None
        return web.json_response({"bars": bars, "symbol": symbol, "next_page_token": token})
