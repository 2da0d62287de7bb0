"""A loopback Alpha Vantage: ``GET /query`` with the real API's functions, errors and limits.

Speaks what the documentation shows: TIME_SERIES_INTRADAY (``interval``, ``month``,
``outputsize``), TIME_SERIES_DAILY and GLOBAL_QUOTE as JSON whose values are all strings,
intraday stamps in US/Eastern, newest first; errors as HTTP 200 bodies with one key —
``Error Message`` (missing/invalid key, unknown symbol or function), ``Note`` (more than
`per_minute` calls in a minute) and ``Information`` (more than `per_day` calls). Faults for tests:
`fail_next(n, status)` answers the next n calls with an HTTP error.

Prices are a deterministic walk per symbol, so tests can recompute what they should receive.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

EASTERN = ZoneInfo("US/Eastern")
INTERVALS = {"1min": 1, "5min": 5, "15min": 15, "30min": 30, "60min": 60}


def price_at(symbol: str, minute: int) -> float:
    """A deterministic price for a symbol at a minute index (tests recompute it)."""
    seed = int.from_bytes(hashlib.sha256(symbol.encode()).digest()[:2], "big")
    return round(100 + seed % 200 + ((minute * 7919) % 1000) / 100, 2)


def _bar(symbol: str, minute: int, width: int) -> dict[str, str]:
    prices = [price_at(symbol, minute + i) for i in range(width)]
    return {
        "1. open": f"{prices[0]:.4f}",
        "2. high": f"{max(prices):.4f}",
        "3. low": f"{min(prices):.4f}",
        "4. close": f"{prices[-1]:.4f}",
        "5. volume": str(100 * width + minute % 97),
    }


class AlphaVantageEmulator:
    def __init__(
        self,
        *,
        api_key: str = "demo-key",
        symbols: tuple[str, ...] = ("IBM", "AAPL"),
        per_minute: int = 5,
        per_day: int = 25,
        window_s: float = 60.0,
        clock=time.time,
    ) -> None:
        self.api_key = api_key
        self.symbols = set(symbols)
        self.per_minute = per_minute
        self.per_day = per_day
        self.window_s = window_s  # the per-minute window (shortened in tests)
        self.clock = clock
        self.calls: list[dict[str, str]] = []
        self._minute: deque[float] = deque()
        self._day: list[float] = []
        self._fail: list[tuple[int, float | None]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next `n` calls with HTTP `status` (and a Retry-After header if given)."""
        self._fail += [(status, retry_after)] * n

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/query", self._query)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/query"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _query(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.calls.append(q)
        if self._fail:
            status, retry_after = self._fail.pop(0)
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            return web.Response(status=status, text="upstream unavailable", headers=headers)
        if q.get("apikey") != self.api_key:
            return web.json_response(
                {
                    "Error Message": "the parameter apikey is invalid or missing. Please claim "
                    "your free API key on (https://www.alphavantage.co/support/#api-key)."
                }
            )
        now = self.clock()
        while self._minute and now - self._minute[0] >= self.window_s:
            self._minute.popleft()
        if len(self._day) >= self.per_day:
            return web.json_response(
                {
                    "Information": f"We have detected your API key as {q['apikey']} and our "
                    f"standard API rate limit is {self.per_day} requests per day."
                }
            )
        if len(self._minute) >= self.per_minute:
            return web.json_response(
                {
                    "Note": "Thank you for using Alpha Vantage! Our standard API call frequency "
                    f"is {self.per_minute} calls per minute and {self.per_day} calls per day."
                }
            )
        self._minute.append(now)
        self._day.append(now)
        function = q.get("function", "")
        symbol = q.get("symbol", "")
        if function not in ("TIME_SERIES_INTRADAY", "TIME_SERIES_DAILY", "GLOBAL_QUOTE"):
            return web.json_response({"Error Message": "This API function does not exist."})
        if function == "GLOBAL_QUOTE":
            if symbol not in self.symbols:
                return web.json_response({"Global Quote": {}})
            minute = int(now // 60)
            return web.json_response(
                {
                    "Global Quote": {
                        "01. symbol": symbol,
                        "02. open": f"{price_at(symbol, minute - 300):.4f}",
                        "03. high": "0",
                        "04. low": "0",
                        "05. price": f"{price_at(symbol, minute):.4f}",
                        "06. volume": "123456",
                        "07. latest trading day": date.today().isoformat(),
                        "08. previous close": "0",
                        "09. change": "0",
                        "10. change percent": "0%",
                    }
                }
            )
        if symbol not in self.symbols:
            return web.json_response(
                {
                    "Error Message": "Invalid API call. Please retry or visit "
                    "the documentation for " + function + "."
                }
            )
        if function == "TIME_SERIES_DAILY":
            return web.json_response(self._daily(symbol))
        interval = q.get("interval", "")
        if interval not in INTERVALS:
            return web.json_response({"Error Message": "Invalid API call: interval."})
        return web.json_response(self._intraday(symbol, interval, q.get("month")))

    def _intraday(self, symbol: str, interval: str, month: str | None) -> dict:
        width = INTERVALS[interval]
        first = datetime.strptime(month or "2024-07", "%Y-%m")
        series = {}
        day = first
        while day.month == first.month:
            if day.weekday() < 5:
                t = day.replace(hour=9, minute=30)
                while t < day.replace(hour=16):
                    minute = int(t.replace(tzinfo=EASTERN).timestamp() // 60)
                    series[t.strftime("%Y-%m-%d %H:%M:%S")] = _bar(symbol, minute, width)
                    t += timedelta(minutes=width)
            day += timedelta(days=1)
        return {
            "Meta Data": {
                "1. Information": f"Intraday ({interval}) open, high, low, close prices and volume",
                "2. Symbol": symbol,
                "3. Last Refreshed": max(series),
                "4. Interval": interval,
                "5. Output Size": "Full size",
                "6. Time Zone": "US/Eastern",
            },
            f"Time Series ({interval})": dict(sorted(series.items(), reverse=True)),
        }

    def _daily(self, symbol: str) -> dict:
        series = {}
        day = date(2024, 1, 2)
        while day < date(2024, 12, 31):
            if day.weekday() < 5:
                minute = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() // 60)
                series[day.isoformat()] = _bar(symbol, minute, 390)
            day += timedelta(days=1)
        return {
            "Meta Data": {
                "1. Information": "Daily Prices (open, high, low, close) and Volumes",
                "2. Symbol": symbol,
                "3. Last Refreshed": max(series),
                "4. Output Size": "Full size",
                "5. Time Zone": "US/Eastern",
            },
            "Time Series (Daily)": dict(sorted(series.items(), reverse=True)),
        }
