"""Factors from announced events: duplicates collapsed, conflicts rejected, each decision said."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

import polars as pl

from mdstream.core.corporate_actions.actions import (
    FACTOR_TABLE_SCHEMA,
    NO_FACTOR_KINDS,
    SHARE_KINDS,
    ActionKind,
    CorporateAction,
    DecisionCode,
    DividendReference,
    FactorDecision,
    FactorResult,
    is_number,
)


def _same_terms(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    for x, y in zip(a, b, strict=True):
        if is_number(x) and is_number(y):
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
