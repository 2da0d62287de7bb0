"""Corporate actions: the event model, factor computation, adjustment on read, forward adjustment
for live bars and a split-like jump detector.

Everything here is pure (no I/O): raw prices are stored once and adjusted on read from a dated,
append-only factor table, because factors fixed at write time drift when a later event arrives
(field notes §4).

Conventions (Yahoo / Lean / zipline, field notes §4):

* An event's *price factor* multiplies every price dated **before** its ex-date. A cash dividend D
  with ex-date t has ``1 - D / close(t-1)``, where ``close(t-1)`` is the last raw close strictly
  before t; a split of ratio r (new shares per old share) has ``1 / r`` and a *volume factor* r.
* Adjusted price on date d = raw * Π(price factors of events with ex_date > d); adjusted volume =
  raw volume * Π(volume factors of the same events) = raw volume / split price factor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "FACTOR_TABLE_SCHEMA",
    "ActionKind",
    "AdjustmentMode",
    "CorporateAction",
    "CorporateActionError",
    "DecisionCode",
    "DividendReference",
    "FactorDecision",
    "FactorResult",
    "ForwardAdjustment",
    "SplitSuspicion",
    "adjust",
    "compute_factors",
    "cumulative_factors",
    "detect_split_like_jumps",
    "forward_factor",
    "nearest_simple_ratio",
    "simple_ratios",
]


class CorporateActionError(ValueError):
    """An action that cannot be valid whatever the prices are (bad ratio, missing field...)."""


class ActionKind(StrEnum):
    STOCK_SPLIT = "stock_split"
    REVERSE_SPLIT = "reverse_split"
    CASH_DIVIDEND = "cash_dividend"
    STOCK_DIVIDEND = "stock_dividend"
    SPIN_OFF = "spin_off"
    MERGER = "merger"
    SYMBOL_CHANGE = "symbol_change"


#: Events that change the share count: price factor 1/ratio, volume factor ratio.
SHARE_KINDS = frozenset(
    {ActionKind.STOCK_SPLIT, ActionKind.REVERSE_SPLIT, ActionKind.STOCK_DIVIDEND}
)
#: Events that distribute value per share: price factor from a reference close, volume factor 1.
VALUE_KINDS = frozenset({ActionKind.CASH_DIVIDEND, ActionKind.SPIN_OFF})
#: Events with no back-adjustment factor (handled by instrument/symbol mapping instead).
NO_FACTOR_KINDS = frozenset({ActionKind.MERGER, ActionKind.SYMBOL_CHANGE})


class AdjustmentMode(StrEnum):
    """Lean's normalisation modes (field notes §4)."""

    RAW = "raw"
    SPLIT_ADJUSTED = "split_adjusted"
    ADJUSTED = "adjusted"
    TOTAL_RETURN = "total_return"


class DividendReference(StrEnum):
    """Which close turns a cash amount into a price factor.

    ``PREVIOUS_CLOSE`` is Yahoo's, Lean's and zipline's ``1 - D / close(t-1)`` (the default).
    ``EX_DATE_CLOSE`` is ``close(t) / (close(t) + D)``: what Quandl's WIKI prices use (measured on
    ``QUANDL_ARCHIVE.zip``: every dividend step there equals ``1 + D/close(ex-date)`` to 1e-10,
    none equals ``1/(1 - D/close(t-1))``). Kept so that vendor's series can be reproduced.
    """

    PREVIOUS_CLOSE = "previous_close"
    EX_DATE_CLOSE = "ex_date_close"


class DecisionCode(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    NO_REFERENCE_CLOSE = "no_reference_close"
    NON_POSITIVE_FACTOR = "non_positive_factor"
    NO_PRICE_EFFECT = "no_price_effect"


_MIDNIGHT = time(0, 0)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class CorporateAction:
    """One announced corporate action, validated on construction.

    ``ratio`` is always *new shares per old share*: 7.0 for a 7:1 split, 0.1 for a 1:10 reverse
    split, 1 + q for a stock dividend of fraction q (see :meth:`stock_dividend`), acquirer shares
    per share for a merger. ``amount`` is cash per share for a dividend, the value per parent
    share of the distributed shares for a spin-off, cash per share for a merger.
    ``announced_at`` must be timezone-aware; it drives point-in-time reads (:attr:`known_at`).
    """

    kind: ActionKind
    instrument_id: str
    symbol: str
    ex_date: date
    ratio: float | None = None
    amount: float | None = None
    currency: str | None = None
    record_date: date | None = None
    source: str = ""
    announced_at: datetime | None = None
    new_symbol: str | None = None

    def __post_init__(self) -> None:
        try:
            kind = ActionKind(self.kind)
        except ValueError:
            raise CorporateActionError(f"unknown corporate action kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        if not self.instrument_id:
            raise CorporateActionError("instrument_id is required")
        if not self.symbol:
            raise CorporateActionError(f"{kind}: symbol is required ({self.instrument_id})")
        for name in ("ex_date", "record_date"):
            value = getattr(self, name)
            if value is None and name == "record_date":
                continue
            if not isinstance(value, date) or isinstance(value, datetime):
                raise CorporateActionError(f"{kind}: {name} must be a datetime.date, got {value!r}")
        if self.announced_at is not None and (
            not isinstance(self.announced_at, datetime) or self.announced_at.tzinfo is None
        ):
            raise CorporateActionError(f"{kind}: announced_at must be a timezone-aware datetime")
        for name in ("ratio", "amount"):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value) or not math.isfinite(value):
                raise CorporateActionError(f"{kind}: {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.ratio is not None and self.ratio <= 0:
            raise CorporateActionError(f"{kind}: non-positive ratio {self.ratio:g}")
        if self.amount is not None and self.amount < 0:
            raise CorporateActionError(f"{kind}: negative amount {self.amount:g}")
        if self.currency is not None and not (
            len(self.currency) == 3 and self.currency.isalpha() and self.currency.isupper()
        ):
            raise CorporateActionError(
                f"{kind}: currency must be an ISO 4217 code, got {self.currency!r}"
            )
        self._check_fields_for_kind(kind)

    def _check_fields_for_kind(self, kind: ActionKind) -> None:
        def need(name: str) -> None:
            if getattr(self, name) is None:
                raise CorporateActionError(
                    f"{kind} on {self.ex_date} ({self.symbol}): {name} is required"
                )

        def forbid(name: str) -> None:
            if getattr(self, name) is not None:
                raise CorporateActionError(
                    f"{kind} on {self.ex_date} ({self.symbol}): {name} does not apply to this kind"
                )

        if kind in SHARE_KINDS:
            need("ratio")
            forbid("amount")
            assert self.ratio is not None
            if kind is ActionKind.STOCK_SPLIT and self.ratio <= 1:
                raise CorporateActionError(
                    f"stock_split needs ratio > 1 (new/old shares), got {self.ratio:g}: "
                    "use REVERSE_SPLIT for fewer shares"
                )
            if kind is ActionKind.REVERSE_SPLIT and self.ratio >= 1:
                raise CorporateActionError(
                    f"reverse_split needs ratio < 1 (e.g. 0.1 for 1:10), got {self.ratio:g}"
                )
            if kind is ActionKind.STOCK_DIVIDEND and self.ratio <= 1:
                raise CorporateActionError(
                    f"stock_dividend needs ratio = 1 + fraction > 1, got {self.ratio:g}"
                )
        elif kind in VALUE_KINDS:
            need("amount")
            need("currency")
            forbid("ratio")
            if kind is ActionKind.SPIN_OFF and self.amount == 0:
                raise CorporateActionError("spin_off needs a positive value per parent share")
        elif kind is ActionKind.MERGER:
            if self.ratio is None and self.amount is None:
                raise CorporateActionError(
                    "merger needs a share ratio and/or a cash amount per share"
                )
            if self.amount is not None:
                need("currency")
        elif kind is ActionKind.SYMBOL_CHANGE:
            need("new_symbol")
            if self.new_symbol == self.symbol:
                raise CorporateActionError(f"symbol_change to the same symbol {self.symbol!r}")

    @classmethod
    def split(
        cls, *, instrument_id: str, symbol: str, ex_date: date, new: int, old: int, **kw: Any
    ) -> CorporateAction:
        """A ``new``:``old`` split; STOCK_SPLIT or REVERSE_SPLIT chosen from the ratio."""
        if new <= 0 or old <= 0:
            raise CorporateActionError(f"non-positive split terms {new}:{old}")
        kind = ActionKind.STOCK_SPLIT if new > old else ActionKind.REVERSE_SPLIT
        return cls(
            kind=kind,
            instrument_id=instrument_id,
            symbol=symbol,
            ex_date=ex_date,
            ratio=new / old,
            **kw,
        )

    @classmethod
    def stock_dividend(
        cls, *, instrument_id: str, symbol: str, ex_date: date, fraction: float, **kw: Any
    ) -> CorporateAction:
        """A stock dividend of ``fraction`` new shares per share: a split of ratio 1 + fraction."""
        if not _is_number(fraction) or not math.isfinite(fraction) or fraction <= 0:
            raise CorporateActionError(
                f"stock_dividend needs a positive fraction, got {fraction!r}"
            )
        return cls(
            kind=ActionKind.STOCK_DIVIDEND,
            instrument_id=instrument_id,
            symbol=symbol,
            ex_date=ex_date,
            ratio=1.0 + fraction,
            **kw,
        )

    @property
    def known_at(self) -> datetime:
        """When the event's factor enters the series, for point-in-time reads.

        The later of the announcement and the ex-date (00:00 UTC): a price series seen before the
        ex-date is not yet adjusted, and an event that arrived late (a vendor correction after the
        ex-date) must not be visible to a read as of a time before it arrived.
        """
        effective = datetime.combine(self.ex_date, _MIDNIGHT, tzinfo=UTC)
        if self.announced_at is None:
            return effective
        return max(effective, self.announced_at.astimezone(UTC))

    def terms(self) -> tuple[object, ...]:
        """What two announcements of the same (instrument, kind, ex_date) must agree on."""
        return (self.ratio, self.amount, self.currency, self.new_symbol)


@dataclass(frozen=True, slots=True)
class FactorDecision:
    """The outcome for one input action: applied or not, and why (an audit record, not a log)."""

    action: CorporateAction
    applied: bool
    reason: str
    code: DecisionCode


#: Columns of the dated, append-only factor table (one row per applied event).
FACTOR_TABLE_SCHEMA: dict[str, pl.DataType] = {
    "instrument_id": pl.String(),
    "symbol": pl.String(),
    "ex_date": pl.Date(),
    "kind": pl.String(),
    "price_factor": pl.Float64(),
    "volume_factor": pl.Float64(),
    "ratio": pl.Float64(),
    "distribution": pl.Float64(),
    "currency": pl.String(),
    "reference_date": pl.Date(),
    "reference_close": pl.Float64(),
    "source": pl.String(),
    "known_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True, slots=True)
class FactorResult:
    """Per-event factor rows (:data:`FACTOR_TABLE_SCHEMA`) and one decision per input action."""

    table: pl.DataFrame
    decisions: tuple[FactorDecision, ...] = field(default_factory=tuple)

    def cumulative(self, as_of: date | datetime | None = None) -> pl.DataFrame:
        return cumulative_factors(self.table, as_of=as_of)

    @property
    def rejected(self) -> list[FactorDecision]:
        return [d for d in self.decisions if not d.applied]


def _same_terms(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    for x, y in zip(a, b, strict=True):
        if _is_number(x) and _is_number(y):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):  # type: ignore[arg-type]
                return False
        elif x != y:
            return False
    return True


def _describe(action: CorporateAction) -> str:
    parts = [f"{action.kind} {action.symbol} ex {action.ex_date}"]
    if action.ratio is not None:
        parts.append(f"ratio {action.ratio:g}")
    if action.amount is not None:
        parts.append(f"amount {action.amount:g} {action.currency}")
    if action.new_symbol is not None:
        parts.append(f"-> {action.new_symbol}")
    parts.append(f"from {action.source or '?'}")
    return " ".join(parts)


def _resolve_announcements(
    actions: Sequence[CorporateAction],
) -> tuple[list[int], dict[int, FactorDecision]]:
    """Collapse duplicate announcements and reject conflicting ones.

    Same (instrument, kind, ex_date) with the same terms → one event, the earliest known
    announcement (later ones are DUPLICATE). Different terms → nobody can tell which is right, so
    none is applied and every one gets a CONFLICT decision naming the others.
    """
    groups: dict[tuple[str, ActionKind, date], list[int]] = {}
    for i, action in enumerate(actions):
        groups.setdefault((action.instrument_id, action.kind, action.ex_date), []).append(i)
    survivors: list[int] = []
    decided: dict[int, FactorDecision] = {}
    for indexes in groups.values():
        ordered = sorted(
            indexes,
            key=lambda i: (actions[i].known_at, actions[i].announced_at or actions[i].known_at, i),
        )
        first = actions[ordered[0]]
        if all(_same_terms(actions[i].terms(), first.terms()) for i in ordered[1:]):
            survivors.append(ordered[0])
            for i in ordered[1:]:
                decided[i] = FactorDecision(
                    actions[i],
                    False,
                    f"duplicate of {_describe(first)} (known {first.known_at:%Y-%m-%d %H:%M}Z); "
                    "one event kept",
                    DecisionCode.DUPLICATE,
                )
            continue
        variants = "; ".join(_describe(actions[i]) for i in ordered)
        for i in ordered:
            decided[i] = FactorDecision(
                actions[i],
                False,
                f"conflicting announcements for the same event, none applied: {variants}",
                DecisionCode.CONFLICT,
            )
    return sorted(survivors), decided


def _empty_table() -> pl.DataFrame:
    return pl.DataFrame(schema=FACTOR_TABLE_SCHEMA)


def compute_factors(
    closes: pl.DataFrame,
    actions: Sequence[CorporateAction],
    *,
    dividend_reference: DividendReference = DividendReference.PREVIOUS_CLOSE,
) -> FactorResult:
    """Per-event price and volume factors from raw daily closes and announced actions.

    ``closes`` has ``date`` (pl.Date) and ``close`` (raw, unadjusted), plus ``instrument_id``
    when it holds several instruments (without it, all actions must be for one instrument).
    Returns the factor rows of the applied events and one :class:`FactorDecision` per input
    action (same order): duplicates collapse, conflicts apply nothing, a value distribution
    with no reference close is skipped (as zipline does) instead of crashing, and a split
    applies even when its ex-date has no bar (its factor needs no close).
    """
    actions = list(actions)
    for action in actions:
        if not isinstance(action, CorporateAction):
            raise TypeError(f"expected CorporateAction, got {type(action).__name__}")
    missing = {"date", "close"} - set(closes.columns)
    if missing:
        raise ValueError(f"closes frame lacks column(s) {sorted(missing)}")
    if "instrument_id" not in closes.columns:
        instruments = {a.instrument_id for a in actions}
        if len(instruments) > 1:
            raise ValueError(
                f"closes has no instrument_id column but actions cover {sorted(instruments)}"
            )
        closes = closes.with_columns(
            instrument_id=pl.lit(next(iter(instruments)) if instruments else "", pl.String)
        )
    px = (
        closes.select(
            pl.col("instrument_id").cast(pl.String),
            pl.col("date").cast(pl.Date),
            pl.col("close").cast(pl.Float64),
        )
        .filter(pl.col("close").is_not_null() & pl.col("close").is_finite() & (pl.col("close") > 0))
        .unique(["instrument_id", "date"], keep="last")
        .sort("date")
    )

    survivors, decided = _resolve_announcements(actions)
    with_factor: list[int] = []
    for i in survivors:
        action = actions[i]
        if action.kind in NO_FACTOR_KINDS:
            decided[i] = FactorDecision(
                action,
                False,
                f"{action.kind} has no back-adjustment factor (handled by instrument mapping)",
                DecisionCode.NO_PRICE_EFFECT,
            )
        else:
            with_factor.append(i)

    if not with_factor:
        return FactorResult(_empty_table(), tuple(decided[i] for i in range(len(actions))))

    events = pl.DataFrame(
        {
            "__idx": with_factor,
            "instrument_id": [actions[i].instrument_id for i in with_factor],
            "symbol": [actions[i].symbol for i in with_factor],
            "ex_date": [actions[i].ex_date for i in with_factor],
            "kind": [str(actions[i].kind) for i in with_factor],
            "ratio": [actions[i].ratio for i in with_factor],
            "amount": [actions[i].amount for i in with_factor],
            "currency": [actions[i].currency for i in with_factor],
            "source": [actions[i].source for i in with_factor],
            "known_at": [actions[i].known_at for i in with_factor],
        },
        schema_overrides={
            "__idx": pl.Int64,
            "ex_date": pl.Date,
            "ratio": pl.Float64,
            "amount": pl.Float64,
            "currency": pl.String,
            "known_at": pl.Datetime("us", "UTC"),
        },
    ).sort("ex_date")
    prev = px.rename({"date": "reference_date", "close": "reference_close"})
    events = events.join_asof(
        prev,
        left_on="ex_date",
        right_on="reference_date",
        by="instrument_id",
        strategy="backward",
        allow_exact_matches=False,
        coalesce=False,
        check_sortedness=False,
    ).drop("instrument_id_right", strict=False)
    events = events.join(
        px.rename({"date": "ex_date", "close": "ex_close"}),
        on=["instrument_id", "ex_date"],
        how="left",
    )

    is_share = pl.col("kind").is_in([str(k) for k in SHARE_KINDS])
    if dividend_reference is DividendReference.EX_DATE_CLOSE:
        value_factor = pl.col("ex_close") / (pl.col("ex_close") + pl.col("amount"))
        reference_ok = pl.col("ex_close").is_not_null()
        ref_date, ref_close = pl.col("ex_date"), pl.col("ex_close")
    else:
        value_factor = 1.0 - pl.col("amount") / pl.col("reference_close")
        reference_ok = pl.col("reference_close").is_not_null()
        ref_date, ref_close = pl.col("reference_date"), pl.col("reference_close")
    events = events.with_columns(
        price_factor=pl.when(is_share).then(1.0 / pl.col("ratio")).otherwise(value_factor),
        volume_factor=pl.when(is_share).then(pl.col("ratio")).otherwise(pl.lit(1.0)),
        distribution=pl.when(is_share).then(pl.lit(0.0)).otherwise(pl.col("amount")),
        reference_ok=is_share | reference_ok,
        reference_date=pl.when(is_share).then(pl.col("reference_date")).otherwise(ref_date),
        reference_close=pl.when(is_share).then(pl.col("reference_close")).otherwise(ref_close),
    )

    applied_idx: list[int] = []
    for row in events.iter_rows(named=True):
        i = row["__idx"]
        action = actions[i]
        if not row["reference_ok"]:
            which = (
                "close on the ex-date"
                if dividend_reference is DividendReference.EX_DATE_CLOSE
                else "close before the ex-date"
            )
            decided[i] = FactorDecision(
                action,
                False,
                f"skipped: no {which} for {action.symbol} {action.kind} ex {action.ex_date}, "
                "so the dividend ratio is undefined (zipline drops it too)",
                DecisionCode.NO_REFERENCE_CLOSE,
            )
            continue
        pf = row["price_factor"]
        if not (pf > 0 and math.isfinite(pf)):
            decided[i] = FactorDecision(
                action,
                False,
                f"skipped: {action.kind} {action.amount:g} against close "
                f"{row['reference_close']:g} "
                f"({row['reference_date']}) gives a non-positive price factor {pf:.6g}",
                DecisionCode.NON_POSITIVE_FACTOR,
            )
            continue
        if action.kind in SHARE_KINDS:
            reason = (
                f"{action.kind} ratio {action.ratio:g}: price factor {pf:.10g}, "
                f"volume factor {action.ratio:g}"
            )
            if row["ex_close"] is None:
                reason += "; no bar on the ex-date (a split factor needs no close)"
        else:
            reason = (
                f"{action.kind} {action.amount:g} {action.currency} ex {action.ex_date}: "
                "price factor "
                f"{pf:.10g} from close {row['reference_close']:g} on {row['reference_date']} "
                f"({dividend_reference})"
            )
        decided[i] = FactorDecision(action, True, reason, DecisionCode.APPLIED)
        applied_idx.append(i)

    table = (
        events.filter(pl.col("__idx").is_in(applied_idx))
        .sort("instrument_id", "ex_date", "__idx")
        .select(list(FACTOR_TABLE_SCHEMA))
        .cast(FACTOR_TABLE_SCHEMA)  # type: ignore[arg-type]
    )
    return FactorResult(table, tuple(decided[i] for i in range(len(actions))))


def _known(table: pl.DataFrame, as_of: date | datetime | None) -> pl.DataFrame:
    """Rows known at ``as_of``: a date means "by the end of that day (UTC)"."""
    if as_of is None:
        return table
    if isinstance(as_of, datetime):
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware (or a date)")
        return table.filter(pl.col("known_at") <= as_of.astimezone(UTC))
    end = datetime.combine(as_of + timedelta(days=1), _MIDNIGHT, tzinfo=UTC)
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


# --- split-like jump detection -------------------------------------------------------------

#: Large split terms beyond N, M ≤ 10 (checked both as 1:N reverse and N:1 forward).
LARGE_SPLIT_TERMS: tuple[int, ...] = (12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200, 250, 500, 1000)


def simple_ratios(
    max_term: int = 10, large_terms: Iterable[int] = LARGE_SPLIT_TERMS
) -> list[tuple[int, int]]:
    """Split terms (new, old) in lowest terms: every N:M with N, M ≤ max_term, N ≠ M, plus
    N:1 and 1:N for each large term."""
    terms = {
        (f.numerator, f.denominator)
        for n in range(1, max_term + 1)
        for m in range(1, max_term + 1)
        if n != m
        for f in (Fraction(n, m),)
    }
    for n in large_terms:
        terms.update({(n, 1), (1, n)})
    return sorted(terms, key=lambda t: t[0] / t[1])


def nearest_simple_ratio(
    value: float,
    *,
    tolerance: float,
    max_term: int = 10,
    large_terms: Iterable[int] = LARGE_SPLIT_TERMS,
) -> tuple[int, int] | None:
    """The split terms (new, old) whose ratio is nearest ``value`` in log space, if within
    ``tolerance`` (relative); used to snap vendor ratios like 1.999996 back to 2:1."""
    if not (value > 0 and math.isfinite(value)):
        return None
    best = min(
        simple_ratios(max_term, large_terms), key=lambda t: abs(math.log(value * t[1] / t[0]))
    )
    if abs(value * best[1] / best[0] - 1.0) > tolerance:
        return None
    return best


@dataclass(frozen=True, slots=True)
class SplitSuspicion:
    """A day that looks like an unannounced split.

    Never applied: a human or a second source decides.
    """

    date: date
    previous_date: date
    price_ratio: float  # previous close / (close or open) ≈ new/old shares for a split
    compared_to: str  # "close" or "open": which of the day's prices matched best
    new_shares: int
    old_shares: int
    ratio_error: float  # price_ratio / (new/old) - 1
    volume_ratio: float  # volume / median volume of the previous sessions
    reason: str


def detect_split_like_jumps(
    bars: pl.DataFrame,
    *,
    tolerance: float = 0.03,
    min_jump: float = 1.25,
    volume_lookback: int = 5,
    volume_share: float = 0.5,
    max_term: int = 10,
    large_terms: Iterable[int] = LARGE_SPLIT_TERMS,
) -> list[SplitSuspicion]:
    """Flag days whose price jump matches a simple split ratio *and* whose volume jumps with it.

    ``bars``: one instrument's consecutive daily bars with ``date``, ``close``, ``volume`` and
    optionally ``open``. A day is suspicious when ``prev_close / close`` (or ``prev_close / open``:
    a split happens at the open, so the overnight gap is not blurred by the day's own move; AAPL
    rose 10% on its 2000-06-21 split day) is within ``tolerance`` (relative) of N/M for the
    candidate terms (:func:`simple_ratios`) whose jump max(r, 1/r) is at least ``min_jump``
    (ratios such as 10:9 are ordinary daily moves), and the share volume moved the same way by
    at least ``volume_share`` of the ratio in log terms (a split multiplies the share count, so
    volume / median(previous ``volume_lookback`` volumes) ≈ r; a crash moves the price without
    the matching volume). Nothing is applied: these are suspicions.
    """
    missing = {"date", "close", "volume"} - set(bars.columns)
    if missing:
        raise ValueError(f"bars lack column(s) {sorted(missing)}")
    has_open = "open" in bars.columns
    frame = (
        bars.select(
            pl.col("date").cast(pl.Date),
            pl.col("close").cast(pl.Float64),
            (pl.col("open") if has_open else pl.col("close")).cast(pl.Float64).alias("open"),
            pl.col("volume").cast(pl.Float64),
        )
        .sort("date")
        .with_columns(
            previous_date=pl.col("date").shift(1),
            close_ratio=pl.col("close").shift(1) / pl.col("close"),
            open_ratio=pl.col("close").shift(1) / pl.col("open"),
            volume_ratio=pl.col("volume")
            / pl.col("volume").shift(1).rolling_median(volume_lookback, min_samples=1),
        )
        .filter(
            pl.col("close_ratio").is_finite()
            & (pl.col("close_ratio") > 0)
            & pl.col("open_ratio").is_finite()
            & (pl.col("open_ratio") > 0)
            & pl.col("volume_ratio").is_finite()
            & (pl.col("volume_ratio") > 0)
        )
    )
    candidates = [
        t for t in simple_ratios(max_term, large_terms) if max(t[0] / t[1], t[1] / t[0]) >= min_jump
    ]
    if frame.height == 0 or not candidates:
        return []
    log_candidates = np.log(np.array([n / m for n, m in candidates]))

    def nearest(ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distance = np.abs(np.log(ratio)[:, None] - log_candidates[None, :])
        index = distance.argmin(axis=1)
        return index, distance[np.arange(ratio.size), index]

    close_ratio = frame.get_column("close_ratio").to_numpy()
    open_ratio = frame.get_column("open_ratio").to_numpy()
    close_idx, close_dist = nearest(close_ratio)
    open_idx, open_dist = nearest(open_ratio)
    use_open = open_dist < close_dist
    index = np.where(use_open, open_idx, close_idx)
    price_ratio = np.where(use_open, open_ratio, close_ratio)
    log_r = log_candidates[index]
    ratio_error = price_ratio / np.exp(log_r) - 1.0
    volume_ratio = frame.get_column("volume_ratio").to_numpy()
    log_volume = np.log(volume_ratio)
    volume_ok = (np.sign(log_volume) == np.sign(log_r)) & (
        np.abs(log_volume) >= volume_share * np.abs(log_r)
    )
    hits = np.flatnonzero((np.abs(ratio_error) <= tolerance) & volume_ok)
    dates = frame.get_column("date").to_list()
    previous = frame.get_column("previous_date").to_list()
    out: list[SplitSuspicion] = []
    for k in hits:
        new, old = candidates[int(index[k])]
        against = "open" if use_open[k] else "close"
        out.append(
            SplitSuspicion(
                date=dates[k],
                previous_date=previous[k],
                price_ratio=float(price_ratio[k]),
                compared_to=against,
                new_shares=new,
                old_shares=old,
                ratio_error=float(ratio_error[k]),
                volume_ratio=float(volume_ratio[k]),
                reason=(
                    f"previous close / {against} = {price_ratio[k]:.4f} vs a {new}:{old} split "
                    f"(off by {ratio_error[k]:+.2%}) with volume {volume_ratio[k]:.2f}x "
                    "its recent median"
                ),
            )
        )
    return out
