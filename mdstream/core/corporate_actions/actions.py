"""The corporate-action event model: kinds, adjustment modes, decisions and factor rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any

import polars as pl


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


MIDNIGHT = time(0, 0)


def is_number(value: object) -> bool:
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
            if not is_number(value) or not math.isfinite(value):
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
        if not is_number(fraction) or not math.isfinite(fraction) or fraction <= 0:
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
        effective = datetime.combine(self.ex_date, MIDNIGHT, tzinfo=UTC)
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

    @property
    def rejected(self) -> list[FactorDecision]:
        return [d for d in self.decisions if not d.applied]
