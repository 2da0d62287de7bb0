"""Polygon.io (Massive) stocks websocket: `connected` status, `auth` → `auth_success` or
`auth_failed` (then close), `subscribe` with `T.X,Q.X,AM.X` params acknowledged per channel,
arrays of `T`/`Q` events with epoch-ms times, websocket pings."""

from __future__ import annotations

import json

from aiohttp import web

from emulators.core import Connection, Emulator, SentTick


class PolygonEmulator(Emulator):
    provider = "polygon"
    ts_unit_ns = 1_000_000

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._authed: set[int] = set()
        self._seq = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/stocks", self._ws)

    @property
    def ws_url(self) -> str:
        return f"{self.ws_base}/stocks"

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.connections += 1
        conn = Connection(ws)
        await self._status(conn, "connected", "Connected Successfully")
        try:
            await self.serve(conn, self._on_message)
        finally:
            self._authed.discard(id(conn))
        return ws

    async def _status(self, conn: Connection, status: str, message: str) -> None:
        await conn.send(json.dumps([{"ev": "status", "status": status, "message": message}]))

    async def _on_message(self, conn: Connection, text: str) -> bool:
        try:
            msg = json.loads(text)
            action, params = msg["action"], msg["params"]
        except (ValueError, KeyError, TypeError):
            await self._status(conn, "error", "invalid message")
            return True
        if action == "auth":
            if params != self.api_key:
                await self._status(conn, "auth_failed", "authentication failed")
                return False
            self._authed.add(id(conn))
            await self._status(conn, "auth_success", "authenticated")
            return True
        if id(conn) not in self._authed:
            await self._status(conn, "error", "not authorized")
            return True
        channels = [c for c in str(params).split(",") if c]
        symbols = {c.split(".", 1)[1] for c in channels if "." in c}
        if action == "subscribe":
            conn.symbols |= symbols
            self.subscribe_requests.append(sorted(symbols))
            verb = "subscribed to"
        else:
            conn.symbols -= symbols
            verb = "unsubscribed to"
        acks = [{"ev": "status", "status": "success", "message": f"{verb}: {c}"} for c in channels]
        await conn.send(json.dumps(acks))
        return True

    def encode(self, ticks: list[SentTick], sentinel: bool) -> str:
        out = []
        for t in ticks:
            self._seq += 1
            ms = t.ts_ns // 1_000_000
            if t.kind == "TRADE":
                out.append(
                    {
                        "ev": "T",
                        "sym": t.symbol,
                        "x": 4,
                        "i": str(self._seq),
                        "z": 3,
                        "p": t.price,
                        "s": t.size,
                        "c": [0],
                        "t": ms,
                        "q": self._seq,
                    }
                )
            else:
                out.append(
                    {
                        "ev": "Q",
                        "sym": t.symbol,
                        "bx": 4,
                        "bp": t.bid,
                        "bs": 1,
                        "ax": 4,
                        "ap": t.ask,
                        "as": 1,
                        "c": 0,
                        "t": ms,
                        "q": self._seq,
                        "z": 3,
                    }
                )
        if sentinel and ticks:
            out.append(
                {
                    "ev": "T",
                    "sym": ticks[0].symbol,
                    "p": -1,
                    "s": 1,
                    "t": ticks[0].ts_ns // 1_000_000,
                }
            )
        return json.dumps(out)
