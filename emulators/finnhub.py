"""Finnhub: trade websocket (token in the URL, 401 at the handshake when it is wrong, JSON pings)
and REST `/api/v1/quote` and `/api/v1/stock/candle` with a scripted 429 storm."""

from __future__ import annotations

import json
import random
import time

from aiohttp import web

from emulators.core import Connection, Emulator, SentTick


class FinnhubEmulator(Emulator):
    provider = "finnhub"
    ts_unit_ns = 1_000_000  # epoch ms on the wire

    def __init__(self, *, rest_429_first: int = 0, retry_after_s: float = 0.2, **kwargs) -> None:
        kwargs.setdefault("quote_share", 0.0)  # the websocket carries trades only
        super().__init__(**kwargs)
        self.rest_429_first = rest_429_first
        self.retry_after_s = retry_after_s

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._ws)
        app.router.add_get("/api/v1/quote", self._quote)
        app.router.add_get("/api/v1/stock/candle", self._candles)

    @property
    def ws_url(self) -> str:
        return f"{self.ws_base}/"

    @property
    def rest_url(self) -> str:
        return f"{self.http_url}/api/v1"

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token") != self.api_key:
            return web.Response(status=401, text="Unauthorized")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        await self.serve(Connection(ws), self._on_message)
        return ws

    async def _on_message(self, conn: Connection, text: str) -> bool:
        try:
            msg = json.loads(text)
            kind, symbol = msg["type"], msg["symbol"]
        except (ValueError, KeyError, TypeError):
            await conn.send(json.dumps({"type": "error", "msg": "Invalid message"}))
            return True
        if kind == "subscribe":
            conn.symbols.add(symbol)
            self.subscribe_requests.append([symbol])
        elif kind == "unsubscribe":
            conn.symbols.discard(symbol)
        return True

    def encode(self, ticks: list[SentTick], sentinel: bool) -> str:
        data = [
            {"s": t.symbol, "p": t.price, "t": t.ts_ns // 1_000_000, "v": t.size, "c": ["1"]}
            for t in ticks
        ]
        if sentinel and ticks:
            data.append({"s": ticks[0].symbol, "p": -1, "t": ticks[0].ts_ns // 10**6, "v": 1})
        return json.dumps({"type": "trade", "data": data})

    async def heartbeat(self, conn: Connection) -> None:
        await conn.ws.send_str('{"type":"ping"}')

    # --- REST ---------------------------------------------------------------------------------

    def _gate(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("X-Finnhub-Token") or request.query.get("token")
        if token != self.api_key:
            status = 401
            response = web.json_response({"error": "Invalid API key"}, status=status)
        elif len(self.rest_requests) < self.rest_429_first:
            status = 429
            response = web.json_response(
                {"error": "API limit reached. Please try again later. Remaining Limit: 0"},
                status=status,
                headers={"Retry-After": f"{self.retry_after_s:g}"},
            )
        else:
            status, response = 200, None
        self.rest_requests.append((time.monotonic(), request.path, status))
        return response

    async def _quote(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        symbol = request.query.get("symbol", "")
        if symbol.startswith("UNKNOWN"):
            zero = {"c": 0, "d": None, "dp": None, "h": 0, "l": 0, "o": 0, "pc": 0, "t": 0}
            return web.json_response(zero)
        rng = random.Random(symbol)
        last = round(rng.uniform(50, 500), 2)
        return web.json_response(
            {
                "c": last,
                "d": 0.5,
                "dp": 0.2,
                "h": round(last * 1.01, 2),
                "l": round(last * 0.99, 2),
                "o": round(last * 0.995, 2),
                "pc": round(last - 0.5, 2),
                "t": int(time.time()),
            }
        )

    async def _candles(self, request: web.Request) -> web.Response:
        if (refused := self._gate(request)) is not None:
            return refused
        q = request.query
        step = {"1": 60, "5": 300, "15": 900, "30": 1800, "60": 3600, "D": 86400}[q["resolution"]]
        start, end = int(q["from"]), int(q["to"])
        first = -(-start // step) * step
        times = list(range(first, end + 1, step))
        if not times:
            return web.json_response({"s": "no_data"})
        cols: dict[str, list] = {k: [] for k in ("o", "h", "l", "c", "v", "t")}
        for t in times:
            rng = random.Random(f"{q['symbol']}:{t}")
            o = round(rng.uniform(100, 110), 2)
            c = round(o + rng.uniform(-1, 1), 2)
            cols["o"].append(o)
            cols["c"].append(c)
            cols["h"].append(round(max(o, c) + rng.uniform(0, 0.5), 2))
            cols["l"].append(round(min(o, c) - rng.uniform(0, 0.5), 2))
            cols["v"].append(rng.randint(100, 10_000))
            cols["t"].append(t)
        return web.json_response({**cols, "s": "ok"})
