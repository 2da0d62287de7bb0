"""Tunables of the quality framework; every default is documented where it is used."""

from __future__ import annotations

from dataclasses import dataclass

#: Trade conditions (CTA/UTP sale-condition letters as the providers send them) that mark a trade
#: that does not set the last sale price: average price (W), cash (C), next day (N), seller (R),
#: extended hours (T, U), sold out of sequence (Z), prior reference price (P), derivatively priced
#: (4), qualified contingent (7), price variation (H). Such trades stay out of bars and checks.
NON_REGULAR_CONDITIONS = frozenset({"W", "C", "N", "R", "T", "U", "Z", "P", "4", "7", "H"})

#: The spec's quality-score weights.
SCORE_WEIGHTS = {"completeness": 0.3, "accuracy": 0.4, "timeliness": 0.2, "consistency": 0.1}


@dataclass(frozen=True)
class QualityConfig:
    non_regular_conditions: frozenset[str] = NON_REGULAR_CONDITIONS
    # Semantic: a quote spread beyond this many times the day's median spread (field notes §5).
    wide_spread_factor: float = 50.0
    spread_memory: int = 101  # quotes kept per feed for the day's median spread
    # Statistical (Barndorff-Nielsen et al. 2009): |price - rolling median| > k MADs, over the
    # feed's last `mad_window` accepted trades. The MAD has a floor: prices on a one-cent grid
    # often have a MAD of zero.
    mad_window: int = 50
    mad_k: float = 10.0
    mad_floor_rel: float = 5e-4
    mad_min_history: int = 20
    # This many consecutive outliers from a feed, all near each other, are a level shift, not
    # outliers: the feed's new level is accepted (see assess._level_shifts).
    level_shift_after: int = 20
    # An OUTLIER/MISSING condition clears after this many clean trades from the feed.
    clear_after_clean: int = 20
    # Temporal: an instrument is missing when silent during a session for longer than
    # max(gap_factor × its typical inter-arrival time, min_gap_ns): a quiet instrument is no gap.
    calendar: str = "XNYS"
    gap_factor: float = 50.0
    min_gap_ns: int = 30_000_000_000
    gap_check_every_ns: int = 1_000_000_000
    # Timeliness: ingestion latency at or below `good` scores 1, at or above `bad` scores 0.
    latency_good_ns: int = 250_000_000
    latency_bad_ns: int = 5_000_000_000
    # QUALITY_DEGRADED: a feed's running score (EWMA over its ticks) below the threshold raises,
    # back above threshold + hysteresis clears; not judged before `score_min_ticks` ticks.
    score_alert_below: float = 0.8
    score_hysteresis: float = 0.05
    score_alpha: float = 0.02
    score_min_ticks: int = 50
    # Provider reliability: event-time EWMAs with this half-life.
    reliability_half_life_ns: int = 300_000_000_000
    # ConsensusPriceEvents: at most one per instrument per this much event time.
    consensus_publish_every_ns: int = 1_000_000_000
    # Isolation-forest model files (mdstream quality train) per instrument group: the instrument
    # master's type (EQUITY, ETF, ...) → path, "*" for any group not named. Empty: no model check.
    models: tuple[tuple[str, str], ...] = ()

    def model_for(self, group: str | None) -> str | None:
        """The model file of an instrument group (its type in the master), if any."""
        by_group = dict(self.models)
        return by_group.get(group or "*", by_group.get("*"))
