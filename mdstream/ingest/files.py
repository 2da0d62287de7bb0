"""File sources for `mdstream backfill`: CSV/Parquet tables (polars) and Databento DBN files.

Both read their files once (in a thread), keep the records sorted by time per symbol, and hand out
one time range per `fetch`, so a backfill of many chunks reads each file once. Records that belong
to no chunk (unreadable symbol or timestamp, undecodable files) are returned once by `unplaced()`,
so the backfill dead-letters them rather than silently dropping them.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from mdstream.core.normalise import datetime_to_ns
from mdstream.providers.base import FrameError, ParseResult, ProviderBar, ProviderTick
from mdstream.providers.databento import parse_dbn
from mdstream.providers.tabular import ColumnMap, frame_bars, frame_ticks, timestamps_ns

TICKS = "tick"


def _read_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix in (".csv", ".txt") or path.name.lower().endswith((".csv.gz", ".csv.zst")):
        return pl.read_csv(path, infer_schema_length=10_000)
    raise ValueError(f"{path}: not a CSV or Parquet file")


class TableFileSource:
    """CSV/Parquet files through a `ColumnMap`; `freq` "tick" reads ticks, else bars of `freq`."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        provider: str = "file",
        columns: ColumnMap | None = None,
        time_unit: str = "ns",
        tz: str = "UTC",
        max_span: timedelta = timedelta(days=1),
        symbol: str | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.provider = provider
        self.columns = columns or ColumnMap()
        self.time_unit = time_unit
        self.tz = tz
        self.max_span = max_span
        # The symbol of every row, for single-instrument files without a symbol column.
        self.symbol = symbol
        self._frame: pl.DataFrame | None = None
        self._unplaced: pl.DataFrame | None = None
        self._load_lock = asyncio.Lock()

    def _load_sync(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        frames = [_read_table(p) for p in self.paths]
        frame = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        cols = self.columns
        if self.symbol is not None:
            if cols.symbol in frame.columns:
                raise ValueError(f"{self.paths}: has a {cols.symbol!r} column; drop the symbol")
            frame = frame.with_columns(pl.lit(self.symbol).alias(cols.symbol))
        for name in (cols.symbol, cols.timestamp):
            if name not in frame.columns:
                raise ValueError(f"{self.paths}: no column {name!r} (have {frame.columns})")
        keyed = frame.with_columns(
            pl.col(cols.symbol).cast(pl.String, strict=False).alias("__symbol"),
            pl.lit(timestamps_ns(frame[cols.timestamp], self.time_unit, self.tz)).alias("__ts"),
        )
        placed = keyed["__symbol"].is_not_null() & keyed["__ts"].is_not_null()
        return (
            keyed.filter(placed).sort("__symbol", "__ts", maintain_order=True),
            keyed.filter(~placed).drop("__symbol", "__ts"),
        )

    async def _load(self) -> pl.DataFrame:
        async with self._load_lock:
            if self._frame is None:
                self._frame, self._unplaced = await asyncio.to_thread(self._load_sync)
        return self._frame

    def _parse(self, frame: pl.DataFrame, freq: str) -> ParseResult:
        kw = {"time_unit": self.time_unit, "tz": self.tz}
        if freq == TICKS:
            return frame_ticks(frame, self.provider, self.columns, **kw)
        return frame_bars(frame, self.provider, freq, self.columns, **kw)

    async def fetch(self, symbol: str, start: datetime, end: datetime, freq: str) -> ParseResult:
        frame = await self._load()
        lo, hi = datetime_to_ns(start), datetime_to_ns(end)
        part = frame.filter(
            (pl.col("__symbol") == symbol) & (pl.col("__ts") >= lo) & (pl.col("__ts") < hi)
        ).drop("__symbol", "__ts")
        return self._parse(part, freq) if part.height else ParseResult()

    async def unplaced(self, freq: str) -> ParseResult:
        await self._load()
        assert self._unplaced is not None
        return self._parse(self._unplaced, freq) if self._unplaced.height else ParseResult()


class DatabentoFileSource:
    """DBN files (zstd or plain); `freq` "tick" reads trades/mbp-1, "1s"/"1m"/"1h"/"1d" OHLCV."""

    provider = "databento"

    def __init__(self, paths: Sequence[Path], *, max_span: timedelta = timedelta(hours=1)) -> None:
        self.paths = [Path(p) for p in paths]
        self.max_span = max_span
        self._ticks: dict[str, tuple[list[int], list[ProviderTick]]] | None = None
        self._bars: dict[tuple[str, str], tuple[list[int], list[ProviderBar]]] = {}
        self._errors: list[FrameError] = []
        self._load_lock = asyncio.Lock()

    def _load_sync(self) -> None:
        ticks: dict[str, list[ProviderTick]] = {}
        bars: dict[tuple[str, str], list[ProviderBar]] = {}
        for path in self.paths:
            parsed = parse_dbn(path.read_bytes())
            self._errors += [
                FrameError(e.provider, f"{path.name}: {e.reason}", e.payload) for e in parsed.errors
            ]
            for tick in parsed.ticks:
                ticks.setdefault(tick.symbol, []).append(tick)
            for bar in parsed.bars:
                bars.setdefault((bar.symbol, bar.interval), []).append(bar)
        self._ticks = {}
        for symbol, items in ticks.items():
            items.sort(key=lambda t: (t.tick["timestamp"], t.tick["sequence"] or 0))
            self._ticks[symbol] = ([t.tick["timestamp"] for t in items], items)
        for key, items in bars.items():
            items.sort(key=lambda b: b.start_ns)
            self._bars[key] = ([b.start_ns for b in items], items)

    async def _load(self) -> None:
        async with self._load_lock:
            if self._ticks is None:
                await asyncio.to_thread(self._load_sync)

    async def fetch(self, symbol: str, start: datetime, end: datetime, freq: str) -> ParseResult:
        await self._load()
        assert self._ticks is not None
        lo, hi = datetime_to_ns(start), datetime_to_ns(end)
        if freq == TICKS:
            keys, items = self._ticks.get(symbol, ([], []))
            sel = items[bisect.bisect_left(keys, lo) : bisect.bisect_left(keys, hi)]
            return ParseResult(ticks=list(sel))
        keys, bar_items = self._bars.get((symbol, freq), ([], []))
        sel_bars = bar_items[bisect.bisect_left(keys, lo) : bisect.bisect_left(keys, hi)]
        return ParseResult(bars=list(sel_bars))

    async def unplaced(self, freq: str) -> ParseResult:
        await self._load()
        return ParseResult(errors=list(self._errors))
