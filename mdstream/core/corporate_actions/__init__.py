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

from mdstream.core.corporate_actions.actions import (
    FACTOR_TABLE_SCHEMA,
    ActionKind,
    AdjustmentMode,
    CorporateAction,
    CorporateActionError,
    DecisionCode,
    DividendReference,
    FactorDecision,
    FactorResult,
)
from mdstream.core.corporate_actions.adjust import (
    ForwardAdjustment,
    adjust,
    cumulative_factors,
    forward_factor,
)
from mdstream.core.corporate_actions.factors import compute_factors
from mdstream.core.corporate_actions.split_detection import (
    SplitSuspicion,
    detect_split_like_jumps,
    nearest_simple_ratio,
    simple_ratios,
)

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
