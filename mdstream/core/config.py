"""The pipeline's configuration: one value type below every stage that reads it (no circle)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mdstream.core import bars as barlib
from mdstream.core.instruments import InstrumentMaster
from mdstream.core.quality.config import QualityConfig
from mdstream.core.validation import ValidationRules


@dataclass(frozen=True)
class PipelineConfig:
    intervals: tuple[str, ...] = ("1s", "1m")
    grace_ns: int = 1_000_000_000
    provider_priority: tuple[str, ...] = ("alpaca", "polygon", "finnhub")
    # A trade further than this from the other providers' consensus is an outlier.
    outlier_rel: float = 0.02
    # Per feed: how often it is expected to update an instrument it covers; stale after 2× that.
    expected_interval_ns: Mapping[str, int] = field(default_factory=dict)
    default_expected_interval_ns: int = 1_000_000_000
    stale_factor: float = 2.0
    validation: ValidationRules = field(default_factory=ValidationRules)
    # Window closure and stamp (see mdstream.core.bars); streaming publishes no bar for an empty
    # window.
    conventions: barlib.BarConventions = field(default_factory=barlib.BarConventions)
    # How long after finality a bar can still be corrected by a late trade (0: never).
    correction_retention_ns: int = 30_000_000_000
    # The instrument master: batches of unknown symbols or with invalid identifiers are refused
    # (alert + dead letter) and bars carry exchange, type and session. None: no reference checks.
    instruments: InstrumentMaster | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.conventions.empty != "skip":
            raise ValueError("streaming bars support only empty='skip' (no bar for no trades)")

    quality: QualityConfig = field(default_factory=QualityConfig)

    @property
    def interval_widths(self) -> dict[str, int]:
        return {label: barlib.interval_ns(label) for label in self.intervals}

    def expected_interval(self, provider: str) -> int:
        return self.expected_interval_ns.get(provider, self.default_expected_interval_ns)
