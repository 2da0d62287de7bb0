"""The instrument master: who an instrument is, where and when it trades, and which symbol it had.

- **Canonical id**: the composite FIGI when known (it survives ticker changes and spans venues),
  else `MIC:SYMBOL`. Reference files may also give `instrument_id` explicitly.
- **Identifiers** (ISIN, CUSIP, FIGI) are checked with `python-stdnum`; a US/CA ISIN must also
  embed the CUSIP. A bad identifier is reported, never silently kept.
- **Sessions and time zone** come from `exchange_calendars` (holidays, early closes); US
  pre-market (04:00 local → open) and post-market (close → 20:00 local) on session days.
- **Symbol history**: a provider symbol at a time resolves to an instrument through dated
  periods, e.g. loaded from Lean map files (renames and ticker reuse: GOOG was Alphabet class A
  until 2014-04-02, class C from 2014-04-03).

Pure: parsing takes text, lookups take times; no database and no network here.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
from stdnum import cusip as stdcusip
from stdnum import figi as stdfigi
from stdnum import isin as stdisin

if TYPE_CHECKING:
    import exchange_calendars as xcals

REFERENCE_FILE = Path(__file__).resolve().parent / "reference" / "instruments.csv"

REGULAR, PRE, POST, CLOSED = "REGULAR", "PRE", "POST", "CLOSED"

# Lean map files' exchange codes → ISO 10383 MIC.
LEAN_EXCHANGES = {"Q": "XNAS", "N": "XNYS", "P": "ARCX", "A": "XASE", "Z": "BATS"}
# Venues without a calendar of their own trade on their market's calendar.
_CALENDAR_OF = {"ARCX": "XNYS", "BATS": "XNYS", "XASE": "XNYS", "IEXG": "XNYS", "XCME": "CMES"}
# Extended hours (local clock) for venues that have them.
_EXTENDED = {m: (dt.time(4), dt.time(20)) for m in ("XNYS", "XNAS", "ARCX", "BATS", "XASE", "IEXG")}
_CALENDAR_START = "2000-01-03"


class ReferenceProblem(ValueError):
    """Data that does not agree with the instrument master; the message says how."""


class UnknownInstrument(ReferenceProblem, LookupError):
    """A symbol that the master cannot resolve at that time: never guessed."""


@dataclass(frozen=True)
class Instrument:
    instrument_id: str
    symbol: str
    mic: str
    currency: str = "USD"
    instrument_type: str = "EQUITY"
    name: str | None = None
    isin: str | None = None
    cusip: str | None = None
    figi: str | None = None
    tick_size: float | None = None
    lot_size: float = 1.0

    @property
    def calendar_name(self) -> str:
        return _CALENDAR_OF.get(self.mic, self.mic)

    @property
    def timezone(self) -> str:
        return str(calendar(self.calendar_name).tz)


@dataclass(frozen=True)
class SymbolPeriod:
    """`symbol` on `mic` meant `instrument_id` from `start` to `end` (local dates, inclusive)."""

    symbol: str
    instrument_id: str
    mic: str
    start: dt.date
    end: dt.date


@dataclass(frozen=True)
class IdentifierIssue:
    instrument: str
    field: str
    value: str
    reason: str


# --------------------------------------------------------------------------------------------
# identifiers


@functools.lru_cache(maxsize=65536)
def identifier_problem(kind: str, value: str) -> str | None:
    """Why `value` is not a valid identifier of `kind` (isin, cusip, figi), or None."""
    module = {"isin": stdisin, "cusip": stdcusip, "figi": stdfigi}[kind]
    try:
        module.validate(value)
    except Exception as exc:  # stdnum raises ValidationError subclasses with a message
        return f"invalid {kind.upper()} {value!r}: {exc}"
    return None


def check_identifiers(
    isin: str | None = None, cusip: str | None = None, figi: str | None = None
) -> list[tuple[str, str, str]]:
    """(field, value, reason) for each given identifier that is invalid or inconsistent."""
    issues = [
        (kind, value, reason)
        for kind, value in (("isin", isin), ("cusip", cusip), ("figi", figi))
        if value and (reason := identifier_problem(kind, value))
    ]
    if isin and cusip and not issues and isin[:2] in ("US", "CA") and isin[2:11] != cusip:
        issues.append(("isin", isin, f"ISIN {isin} does not embed the CUSIP {cusip}"))
    return issues


# --------------------------------------------------------------------------------------------
# calendars and sessions


@functools.cache
def calendar(name: str) -> xcals.ExchangeCalendar:
    """An exchange calendar, built once per process (it is immutable; pandas loads on first use)."""
    import exchange_calendars

    return exchange_calendars.get_calendar(name, start=_CALENDAR_START)


def _epoch_ns(times) -> np.ndarray:
    """A tz-aware pandas Series of times → int64 epoch ns."""
    return times.dt.tz_convert(None).dt.as_unit("ns").to_numpy().view(np.int64)


@functools.cache
def _schedule(mic: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(regular opens, closes, extended starts, extended ends) in epoch ns, one per session."""
    name = _CALENDAR_OF.get(mic, mic)
    cal = calendar(name)
    sched = cal.schedule
    opens, closes = _epoch_ns(sched["open"]), _epoch_ns(sched["close"])
    hours = _EXTENDED.get(mic) or _EXTENDED.get(name)
    if hours is None:
        return opens, closes, opens, closes
    tz = ZoneInfo(str(cal.tz))

    def local(day: dt.date, at: dt.time) -> int:
        return int(dt.datetime.combine(day, at, tz).timestamp()) * 1_000_000_000

    days = [d.date() for d in sched.index]
    pre = np.array([local(d, hours[0]) for d in days], dtype=np.int64)
    post = np.array([local(d, hours[1]) for d in days], dtype=np.int64)
    return opens, closes, np.minimum(pre, opens), np.maximum(post, closes)


def classify_sessions(ts: np.ndarray, mic: str) -> np.ndarray:
    """REGULAR / PRE / POST / CLOSED for each epoch-ns timestamp on `mic` (vectorised).

    Regular is [open, close) of a session (early closes included); pre/post market are the
    extended hours of that session's day."""
    opens, closes, ext_start, ext_end = _schedule(mic)
    ts = np.asarray(ts, dtype=np.int64)
    i = np.clip(np.searchsorted(ext_start, ts, side="right") - 1, 0, None)
    in_day = (ts >= ext_start[i]) & (ts < ext_end[i])
    out = np.full(ts.shape, CLOSED, dtype=object)
    out[in_day & (ts < opens[i])] = PRE
    out[in_day & (ts >= opens[i]) & (ts < closes[i])] = REGULAR
    out[in_day & (ts >= closes[i])] = POST
    return out


def session_of(ts: int, mic: str) -> str:
    return str(classify_sessions(np.array([ts]), mic)[0])


def regular_sessions(mic: str, start: str, end: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Regular session (opens, closes, ISO dates) between two dates: for `bars.session_bars`."""
    sched = calendar(_CALENDAR_OF.get(mic, mic)).schedule.loc[start:end]
    opens, closes = _epoch_ns(sched["open"]), _epoch_ns(sched["close"])
    return opens, closes, [d.date().isoformat() for d in sched.index]


_QUARTER_HOUR_NS = 900 * 10**9


def local_date(ts: int, mic: str) -> dt.date:
    """The exchange's local date at `ts`. Every UTC offset in use is a whole number of quarter
    hours, so the date is the same across each UTC quarter hour: computed once per quarter."""
    return _local_date(ts // _QUARTER_HOUR_NS, mic)


@functools.lru_cache(maxsize=4096)
def _local_date(quarter: int, mic: str) -> dt.date:
    tz = ZoneInfo(str(calendar(_CALENDAR_OF.get(mic, mic)).tz))
    return dt.datetime.fromtimestamp(quarter * 900, tz).date()


# --------------------------------------------------------------------------------------------
# the master


@dataclass
class InstrumentMaster:
    instruments: dict[str, Instrument] = field(default_factory=dict)
    periods: dict[str, list[SymbolPeriod]] = field(default_factory=dict)
    issues: list[IdentifierIssue] = field(default_factory=list)

    def add(self, instrument: Instrument) -> None:
        """Add an instrument; its symbol is its own for all time unless history says otherwise."""
        self.instruments[instrument.instrument_id] = instrument
        if not any(
            p.instrument_id == instrument.instrument_id
            for p in self.periods.get(instrument.symbol, [])
        ):
            self.add_period(
                SymbolPeriod(
                    instrument.symbol,
                    instrument.instrument_id,
                    instrument.mic,
                    dt.date.min,
                    dt.date.max,
                )
            )

    def add_period(self, period: SymbolPeriod) -> None:
        self.periods.setdefault(period.symbol, []).append(period)
        self.periods[period.symbol].sort(key=lambda p: p.start)

    def add_history(self, instrument_id: str, periods: Iterable[SymbolPeriod]) -> None:
        """Replace an instrument's symbol periods by dated ones (e.g. from a Lean map file)."""
        periods = list(periods)
        for symbol in list(self.periods):
            self.periods[symbol] = [
                p for p in self.periods[symbol] if p.instrument_id != instrument_id
            ]
        for p in periods:
            self.add_period(replace(p, instrument_id=instrument_id))

    def resolve(self, symbol: str, at_ns: int) -> Instrument:
        """The instrument that `symbol` meant at `at_ns` (on its exchange's local date)."""
        matches = [
            p
            for p in self.periods.get(symbol.upper(), [])
            if p.start <= local_date(at_ns, p.mic) <= p.end
        ]
        if not matches:
            known = ", ".join(
                f"{p.instrument_id} {p.start}..{p.end}" for p in self.periods.get(symbol, [])
            )
            raise UnknownInstrument(
                f"symbol {symbol!r} is not in the instrument master at {at_ns}"
                + (f" (it meant: {known})" if known else "")
            )
        if len({p.instrument_id for p in matches}) > 1:
            raise UnknownInstrument(f"symbol {symbol!r} is ambiguous at {at_ns}: {matches}")
        instrument_id = matches[0].instrument_id
        if instrument_id not in self.instruments:
            raise UnknownInstrument(f"symbol {symbol!r} maps to {instrument_id}, not loaded")
        return replace(self.instruments[instrument_id], symbol=symbol.upper())

    def verify(self, symbol: str, at_ns: int, isin: str | None = None) -> Instrument:
        """The instrument a provider's record names, checked: the symbol must resolve at that
        time, and an ISIN it carries must be valid and the instrument's. ReferenceProblem if not."""
        known = self.resolve(symbol, at_ns)
        problems = [reason for _, _, reason in check_identifiers(isin=isin)]
        if isin and not problems and known.isin and isin != known.isin:
            problems.append(f"ISIN {isin} is not {symbol}'s ({known.isin})")
        if problems:
            raise ReferenceProblem("; ".join(problems))
        return known

    def history(self, instrument_id: str) -> list[SymbolPeriod]:
        return sorted(
            (p for ps in self.periods.values() for p in ps if p.instrument_id == instrument_id),
            key=lambda p: p.start,
        )


# --------------------------------------------------------------------------------------------
# loaders (text in, records out)


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def parse_reference_csv(text: str) -> tuple[list[Instrument], list[IdentifierIssue]]:
    """Instruments from a CSV shaped like FinanceDatabase's equities (symbol, name, currency,
    mic, isin, cusip, figi, composite_figi, …; optional instrument_id, instrument_type,
    tick_size, lot_size). Invalid identifiers are dropped from the instrument and reported."""
    instruments, issues = [], []
    for row in csv.DictReader(io.StringIO(text)):
        symbol, mic = _clean(row.get("symbol")), _clean(row.get("mic"))
        if not symbol or not mic:
            continue
        ids = {k: _clean(row.get(k)) for k in ("isin", "cusip", "figi", "composite_figi")}
        bad = {f for f, _, _ in check_identifiers(ids["isin"], ids["cusip"], ids["figi"])}
        for kind, value, reason in check_identifiers(ids["isin"], ids["cusip"], ids["figi"]):
            issues.append(IdentifierIssue(symbol, kind, value, reason))
        if ids["composite_figi"] and (reason := identifier_problem("figi", ids["composite_figi"])):
            issues.append(IdentifierIssue(symbol, "composite_figi", ids["composite_figi"], reason))
            ids["composite_figi"] = None
        ids = {k: (None if k in bad else v) for k, v in ids.items()}
        figi = ids["composite_figi"] or ids["figi"]
        tick = _clean(row.get("tick_size"))
        instruments.append(
            Instrument(
                instrument_id=_clean(row.get("instrument_id")) or figi or f"{mic}:{symbol}",
                symbol=symbol.upper(),
                mic=mic,
                currency=_clean(row.get("currency")) or "USD",
                instrument_type=(_clean(row.get("instrument_type")) or "EQUITY").upper(),
                name=_clean(row.get("name")),
                isin=ids["isin"],
                cusip=ids["cusip"],
                figi=figi,
                tick_size=float(tick) if tick else None,
                lot_size=float(_clean(row.get("lot_size")) or 1),
            )
        )
    return instruments, issues


def parse_lean_map_file(text: str) -> list[SymbolPeriod]:
    """Symbol periods from a Lean map file (`YYYYMMDD,ticker,exchange` rows): the ticker on a
    date is the one of the first row dated on or after it; the first row is the listing date
    and the last the delisting date (20501231: still listed). The instrument id is the file's
    (the caller's), set by `InstrumentMaster.add_history`."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].strip()]
    periods: list[SymbolPeriod] = []
    start: dt.date | None = None
    for date_text, ticker, *rest in rows:
        date = dt.datetime.strptime(date_text.strip(), "%Y%m%d").date()
        mic = LEAN_EXCHANGES.get((rest[0].strip() if rest else "") or "Q", "XNAS")
        first = start if start is not None else date
        if periods and periods[-1].symbol == ticker.upper() and periods[-1].mic == mic:
            periods[-1] = replace(periods[-1], end=date)
        elif date >= first:
            periods.append(SymbolPeriod(ticker.upper(), "", mic, first, date))
        start = date + dt.timedelta(days=1)
    return periods


def load_master(
    reference: str | Path = REFERENCE_FILE,
    map_files: Mapping[str, str | Path] | None = None,
) -> InstrumentMaster:
    """A master from a reference CSV and, per instrument id, an optional Lean map file."""
    instruments, issues = parse_reference_csv(Path(reference).read_text())
    master = InstrumentMaster(issues=issues)
    for inst in instruments:
        master.add(inst)
    for instrument_id, path in (map_files or {}).items():
        master.add_history(instrument_id, parse_lean_map_file(Path(path).read_text()))
    return master
