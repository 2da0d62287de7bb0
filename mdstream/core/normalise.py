"""Every provider's records into one convention: epoch-ns UTC times, prices as floats in the
major currency unit (optionally converted to a target currency), sizes in shares.

Providers differ (see the field notes, §3): Finnhub and Polygon stream epoch milliseconds,
Databento epoch nanoseconds and prices as int64 × 1e-9, Lean (AlgoSeek) milliseconds since local
midnight and prices × 10,000, Alpha Vantage exchange-local strings, Alpaca RFC 3339 strings. London
quotes in pence (GBX), some feeds count lots. Each is a `Convention`; `normalise` applies one to a
polars frame, vectorised. Pure: FX rates are passed in, never fetched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import polars as pl

_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# Minor currency units that quote 1/100 of a major one (ISO 4217 has no code for them).
MINOR_UNITS = {"GBX": "GBP", "GBp": "GBP", "ZAc": "ZAR", "ILA": "ILS", "USX": "USD"}
DATABENTO_UNDEF_PRICE = 2**63 - 1


class NormalisationError(ValueError):
    """The input cannot be normalised as declared (bad unit, missing FX rate, bad time)."""


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def datetime_to_ns(when: dt.datetime) -> int:
    """An aware datetime as epoch ns UTC, exactly (a float `timestamp()` rounds microseconds)."""
    if when.tzinfo is None:
        raise ValueError(f"{when} has no time zone")
    return (when - _EPOCH) // dt.timedelta(microseconds=1) * 1_000


def epoch_to_ns(values: pl.Series, unit: str) -> pl.Series:
    """Epoch seconds/ms/µs/ns (integers, or floats with a fraction) → int64 ns UTC."""
    if unit not in _PER_UNIT:
        raise NormalisationError(f"unknown epoch unit {unit!r}: use one of {list(_PER_UNIT)}")
    if values.dtype.is_float():
        # Round, do not truncate: 1.7e9 s as a float is rarely an exact multiple of 1 ns.
        return (values * _PER_UNIT[unit]).round(0).cast(pl.Int64)
    return values.cast(pl.Int64) * _PER_UNIT[unit]


def local_to_ns(
    values: pl.Series, tz: str, fmt: str | None = None, ambiguous: str = "raise"
) -> pl.Series:
    """Exchange-local time strings (no offset) in time zone `tz` → int64 ns UTC.

    A wall time that does not exist (spring forward) always raises; one that exists twice
    (fall back) raises unless `ambiguous` is "earliest" or "latest"."""
    try:
        parsed = values.str.to_datetime(fmt, time_unit="ns", strict=True)
        local = parsed.dt.replace_time_zone(tz, ambiguous=ambiguous, non_existent="raise")
    except pl.exceptions.PolarsError as exc:
        raise NormalisationError(
            f"cannot read {values.name!r} as local time in {tz}: {exc}"
        ) from exc
    return local.dt.convert_time_zone("UTC").dt.epoch("ns")


def offset_to_ns(values: pl.Series) -> pl.Series:
    """RFC 3339 strings with an offset or Z (Alpaca: "2024-07-01T13:30:00.123456789Z")."""
    try:
        parsed = values.str.to_datetime(time_unit="ns", time_zone="UTC", strict=True)
    except pl.exceptions.PolarsError as exc:
        raise NormalisationError(f"cannot read {values.name!r} as RFC 3339 times: {exc}") from exc
    return parsed.dt.epoch("ns")


def since_midnight_to_ns(values: pl.Series, day: dt.date, tz: str, unit: str = "ms") -> pl.Series:
    """Lean/AlgoSeek style: time since local midnight of `day` in `tz` → int64 ns UTC.

    Adding to the local midnight's UTC instant is wrong on DST days only for times across the
    switch (2 a.m.), when US exchanges are closed; the offset of noon is used for the day."""
    offset = dt.datetime.combine(day, dt.time(12), tzinfo=ZoneInfo(tz)).utcoffset()
    midnight_utc = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC) - offset
    return epoch_to_ns(values, unit) + int(midnight_utc.timestamp()) * 1_000_000_000


def scaled_to_float(values: pl.Series, divisor: int, undefined: int | None = None) -> pl.Series:
    """Integer-scaled prices → floats (Lean: divisor 10_000; Databento: 1_000_000_000).

    Division by the integer divisor gives the float nearest to the decimal (1674100 / 10_000 is
    167.41 exactly as printed; 1674100 * 1e-4 is not). `undefined` (a sentinel) becomes null."""
    if undefined is not None:
        values = pl.when(values == undefined).then(None).otherwise(values)
    return values.cast(pl.Float64) / divisor


def to_major_unit(prices: pl.Series, currency: str) -> tuple[pl.Series, str]:
    """Prices in a minor unit (pence: GBX/GBp, ZAc, ILA) → the major unit and its code."""
    major = MINOR_UNITS.get(currency)
    if major is None:
        return prices, currency
    return prices / 100, major


def fx_rate(source: str, target: str, rates: Mapping[str, float]) -> float:
    """Units of `target` per unit of `source` from rates keyed "SRC/TGT" (either direction)."""
    if source == target:
        return 1.0
    if (direct := rates.get(f"{source}/{target}")) is not None:
        return float(direct)
    if (inverse := rates.get(f"{target}/{source}")) is not None:
        return 1.0 / float(inverse)
    raise NormalisationError(
        f"no FX rate for {source}/{target}: give one of {source}/{target} or {target}/{source}"
    )


@dataclass(frozen=True)
class Convention:
    """How one provider writes a record: the columns and units to convert from."""

    time_column: str = "ts"
    time: str = "epoch"  # epoch | local | offset | since_midnight
    time_unit: str = "ns"  # for epoch and since_midnight
    time_format: str | None = None  # strptime format for local strings (None: ISO-like)
    price_columns: tuple[str, ...] = ("price",)
    price_divisor: int | None = None  # integer-scaled prices
    undefined_price: int | None = None
    size_column: str | None = "size"
    lot_size: float = 1.0  # shares per unit of size


FINNHUB = Convention(time_column="t", time_unit="ms", price_columns=("p",), size_column="v")
POLYGON_WS = Convention(time_column="t", time_unit="ms", price_columns=("p",), size_column="s")
ALPACA = Convention(time_column="t", time="offset", price_columns=("p",), size_column="s")
ALPHA_VANTAGE = Convention(
    time_column="timestamp",
    time="local",
    time_format="%Y-%m-%d %H:%M:%S",
    price_columns=("open", "high", "low", "close"),
    size_column="volume",
)
DATABENTO = Convention(
    time_column="ts_event",
    price_divisor=1_000_000_000,
    undefined_price=DATABENTO_UNDEF_PRICE,
)
LEAN_TICKS = Convention(time="since_midnight", time_unit="ms", price_divisor=10_000)


def normalise(
    frame: pl.DataFrame,
    convention: Convention,
    *,
    tz: str = "UTC",
    day: dt.date | None = None,
    currency: str = "USD",
    target_currency: str | None = None,
    fx: Mapping[str, float] | None = None,
) -> pl.DataFrame:
    """A provider's frame → `ts` (int64 ns UTC), its price columns as floats in the major unit
    (or `target_currency`), `size` in shares, `currency`; other columns are kept as they are.

    `tz` is the instrument's exchange time zone (for local times), `day` the trading date of
    since-midnight times."""
    c = convention
    raw_time = frame.get_column(c.time_column)
    if c.time == "epoch":
        ts = epoch_to_ns(raw_time, c.time_unit)
    elif c.time == "local":
        ts = local_to_ns(raw_time, tz, c.time_format)
    elif c.time == "offset":
        ts = offset_to_ns(raw_time)
    elif c.time == "since_midnight":
        if day is None:
            raise NormalisationError("since-midnight times need the trading day")
        ts = since_midnight_to_ns(raw_time, day, tz, c.time_unit)
    else:
        raise NormalisationError(f"unknown time convention {c.time!r}")

    rate_to = currency
    columns: dict[str, pl.Series] = {}
    for name in c.price_columns:
        prices = frame.get_column(name)
        if c.price_divisor is not None:
            prices = scaled_to_float(prices, c.price_divisor, c.undefined_price)
        prices, rate_to = to_major_unit(prices.cast(pl.Float64), currency)
        if target_currency is not None:
            prices = prices * fx_rate(rate_to, target_currency, fx or {})
        columns[name] = prices
    out_currency = target_currency or rate_to
    if c.size_column is not None:
        columns["size"] = frame.get_column(c.size_column).cast(pl.Float64) * c.lot_size
    dropped = {c.time_column, c.size_column, *columns}
    rest = [name for name in frame.columns if name not in dropped]
    return frame.with_columns(
        pl.Series("ts", ts, dtype=pl.Int64),
        *(series.alias(name) for name, series in columns.items()),
        pl.lit(out_currency).alias("currency"),
    ).select("ts", *columns, "currency", *rest)
