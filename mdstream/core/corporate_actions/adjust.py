"""Adjustment on read (as known at a time) and forward multipliers for live bars."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from mdstream.core.corporate_actions.actions import (
    MIDNIGHT,
    SHARE_KINDS,
    AdjustmentMode,
    FactorResult,
)


def _known(table: pl.DataFrame, as_of: date | datetime | None) -> pl.DataFrame:
    """Rows known at ``as_of``: a date means "by the end of that day (UTC)"."""
    if as_of is None:
        return table
    if isinstance(as_of, datetime):
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (or a date)")
        return table.filter(pl.col("known_at") <= as_of.astimezone(UTC))
    end = datetime.combine(as_of + timedelta(days=1), MIDNIGHT, tzinfo=UTC)
    return table.filter(pl.col("known_at") < end)


def _is_share_kind() -> pl.Expr:
    return pl.col("kind").is_in([str(k) for k in SHARE_KINDS])


def cumulative_factors(
    table: pl.DataFrame, *, as_of: date | datetime | None = None
) -> pl.DataFrame:
    """Cumulative back-adjustment factors, one row per (instrument, ex_date).

    A row's ``price_factor`` is the product of the factors of every event with ex_date ≥ its own
    ex_date: it applies to bars dated before ``ex_date`` and on/after the previous row's ex_date
    (Lean's factor-file layout, keyed by ex-date instead of the last session before it).
    ``split_factor`` is the same product over share events only, ``volume_factor`` the product of
    volume factors. ``distribution_split_adjusted`` is the cash paid on the ex-date expressed in
    the shares of the latest date (amount * split factor of the bars on the ex-date) and
    ``cum_distribution`` its running sum from the first event: both serve TOTAL_RETURN.
    """
    known = _known(table, as_of)
    per_date = (
        known.group_by("instrument_id", "ex_date")
        .agg(
            event_price=pl.col("price_factor").product(),
            event_split=pl.when(_is_share_kind())
            .then(pl.col("price_factor"))
            .otherwise(1.0)
            .product(),
            event_volume=pl.col("volume_factor").product(),
            distribution=pl.col("distribution").sum(),
        )
        .sort("instrument_id", "ex_date")
    )
    out = (
        per_date.with_columns(
            price_factor=pl.col("event_price").cum_prod(reverse=True).over("instrument_id"),
            split_factor=pl.col("event_split").cum_prod(reverse=True).over("instrument_id"),
            volume_factor=pl.col("event_volume").cum_prod(reverse=True).over("instrument_id"),
        )
        .with_columns(
            distribution_split_adjusted=pl.col("distribution")
            * pl.col("split_factor")
            / pl.col("event_split"),
        )
        .with_columns(
            cum_distribution=pl.col("distribution_split_adjusted").cum_sum().over("instrument_id"),
        )
    )
    return out.select(
        "instrument_id",
        "ex_date",
        "price_factor",
        "split_factor",
        "volume_factor",
        "distribution",
        "distribution_split_adjusted",
        "cum_distribution",
    )


_PRICE_COLUMNS = ("open", "high", "low", "close", "vwap")


def adjust(
    bars: pl.DataFrame,
    factors: pl.DataFrame | FactorResult,
    mode: AdjustmentMode,
    *,
    as_of: date | datetime | None = None,
    price_columns: Sequence[str] | None = None,
    volume_column: str = "volume",
) -> pl.DataFrame:
    """Adjust raw bars on read, vectorised.

    ``bars`` has ``date`` (pl.Date, or a Datetime whose calendar date is used, so intraday bars
    work), price columns (default: those of open/high/low/close/vwap present), optionally
    ``volume`` and ``instrument_id`` (required when ``factors`` covers several instruments).
    Only factor rows with ``known_at <= as_of`` are used (a date as_of = known by the end of that
    day UTC), so a backtest sees the series as it could have been read then. Let, for a bar dated
    d, P(d) = Π price factors and S(d) = Π split price factors of events with ex_date > d, and
    V(d) = Π their volume factors (= 1/S(d)):

    * RAW: unchanged.
    * SPLIT_ADJUSTED: price * S(d); volume * V(d).
    * ADJUSTED: price * P(d) (splits, dividends, spin-offs); volume * V(d) (splits only, as Lean,
      Yahoo and Quandl do: a dividend does not change the share count).
    * TOTAL_RETURN: price * S(d) + Σ D_e * S_e over value distributions e (cash dividends and
      spin-off value) with d0 < ex_e ≤ d, where d0 is the instrument's first bar in ``bars`` and
      S_e = S(ex_e) is the split factor of bars on e's ex-date; volume * V(d). This is Lean's
      TotalReturn (split-adjusted price + dividends paid since the subscription started, which
      is why the sum restarts at the first bar: differences between two bars of one frame do
      not depend on where it starts) with one deliberate difference: Lean adds each
      distribution as paid per share at the time, we express it in the same (latest) share
      units as raw * S(d) by multiplying by S_e. The two coincide when no split follows the
      dividend (e.g. SPY); otherwise Lean's sum mixes pre- and post-split shares.

    Adjusted prices and volumes are Float64; row order and other columns are kept.
    """
    mode = AdjustmentMode(mode)
    if mode is AdjustmentMode.RAW:
        return bars.clone()
    table = factors.table if isinstance(factors, FactorResult) else factors
    if "date" not in bars.columns:
        raise ValueError("bars lack a 'date' column")
    prices = [
        c for c in (_PRICE_COLUMNS if price_columns is None else price_columns) if c in bars.columns
    ]
    if price_columns is not None and len(prices) != len(price_columns):
        raise ValueError(f"price columns not in bars: {sorted(set(price_columns) - set(prices))}")
    has_instrument = "instrument_id" in bars.columns
    if not has_instrument:
        instruments = table.get_column("instrument_id").unique().to_list()
        if len(instruments) > 1:
            raise ValueError(f"bars have no instrument_id but factors cover {sorted(instruments)}")
    cum = cumulative_factors(table, as_of=as_of)

    date_key = pl.col("date")
    if isinstance(bars.schema["date"], pl.Datetime):
        date_key = date_key.dt.date()
    work = bars.with_row_index("__row").with_columns(__d=date_key.cast(pl.Date))
    if has_instrument:
        work = work.with_columns(__inst=pl.col("instrument_id").cast(pl.String))
    else:
        work = work.with_columns(__inst=pl.lit(instruments[0] if instruments else "", pl.String))
    work = work.sort("__d")
    forward = cum.select(
        __inst="instrument_id",
        __ex="ex_date",
        __p="price_factor",
        __s="split_factor",
        __v="volume_factor",
    ).sort("__ex")
    work = work.join_asof(
        forward,
        left_on="__d",
        right_on="__ex",
        by="__inst",
        strategy="forward",
        allow_exact_matches=False,
        check_sortedness=False,
    ).with_columns(pl.col("__p", "__s", "__v").fill_null(1.0))

    multiplier = pl.col("__p") if mode is AdjustmentMode.ADJUSTED else pl.col("__s")
    updates = [(pl.col(c).cast(pl.Float64) * multiplier).alias(c) for c in prices]
    if volume_column in work.columns:
        updates.append(
            (pl.col(volume_column).cast(pl.Float64) * pl.col("__v")).alias(volume_column)
        )
    work = work.with_columns(updates)

    if mode is AdjustmentMode.TOTAL_RETURN:
        paid = cum.select(__inst="instrument_id", __ex2="ex_date", __c="cum_distribution").sort(
            "__ex2"
        )
        work = (
            work.sort("__d")
            .join_asof(
                paid,
                left_on="__d",
                right_on="__ex2",
                by="__inst",
                strategy="backward",
                check_sortedness=False,
            )
            .with_columns(pl.col("__c").fill_null(0.0))
            .with_columns(__c=pl.col("__c") - pl.col("__c").sort_by("__d").first().over("__inst"))
            .with_columns([(pl.col(c) + pl.col("__c")).alias(c) for c in prices])
        )
    return work.sort("__row").drop([c for c in work.columns if c.startswith("__")])


@dataclass(frozen=True, slots=True)
class ForwardAdjustment:
    """Multipliers for a new raw bar, and the ex-dates of the events behind them."""

    price_multiplier: float
    volume_multiplier: float
    ex_dates: tuple[date, ...]


def forward_factor(
    factors: pl.DataFrame | FactorResult,
    instrument_id: str,
    bar_date: date,
    *,
    anchor_date: date,
    mode: AdjustmentMode = AdjustmentMode.ADJUSTED,
    as_of: date | datetime | None = None,
) -> ForwardAdjustment:
    """Factor for a new live bar so it continues a series already adjusted as of ``anchor_date``.

    A consumer that back-adjusted its history once (including every event with ex_date ≤
    ``anchor_date``) must not rewrite that history for each new event while streaming; instead
    new raw bars are scaled *forward* onto the anchor's scale: price * Π 1/f_e and volume *
    Π 1/v_e over the events e with ``anchor_date < ex_date ≤ bar_date`` that are known at
    ``as_of`` (for SPLIT_ADJUSTED, share events only). After a 7:1 split a raw 93 becomes 651,
    next to a pre-split 645. Identity: forward-adjusted(d) = back-adjusted(d) / P(anchor).
    RAW gives 1; TOTAL_RETURN is not defined forward (it is additive) and raises.
    """
    mode = AdjustmentMode(mode)
    if mode is AdjustmentMode.TOTAL_RETURN:
        raise ValueError("forward adjustment is defined for SPLIT_ADJUSTED and ADJUSTED only")
    if mode is AdjustmentMode.RAW or bar_date <= anchor_date:
        return ForwardAdjustment(1.0, 1.0, ())
    table = factors.table if isinstance(factors, FactorResult) else factors
    rows = _known(table, as_of).filter(
        (pl.col("instrument_id") == instrument_id)
        & (pl.col("ex_date") > anchor_date)
        & (pl.col("ex_date") <= bar_date)
    )
    if mode is AdjustmentMode.SPLIT_ADJUSTED:
        rows = rows.filter(_is_share_kind())
    if rows.height == 0:
        return ForwardAdjustment(1.0, 1.0, ())
    price = float(rows.get_column("price_factor").product())
    volume = float(rows.get_column("volume_factor").product())
    ex_dates = tuple(sorted(set(rows.get_column("ex_date").to_list())))
    return ForwardAdjustment(1.0 / price, 1.0 / volume, ex_dates)
