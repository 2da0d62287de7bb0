"""The spec's quality score per data point, and its four components, each in [0, 1].

- completeness: share of the instrument's known providers that are fresh (not stale) when the
  tick arrives, times the share of the feed's messages that arrived (1 - missing sequence
  numbers / expected). "Did we get all the data we expect?"
- accuracy: 1 at the reference price, falling linearly to 0 at the outlier threshold
  (`PipelineConfig.outlier_rel`). The reference is the other fresh providers' consensus, else the
  feed's own last price; a tick with no reference scores 1 (nothing contradicts it). Quotes are
  judged by their mid. A tick excluded as an outlier or rejected scores 0.
- timeliness: ingestion latency (batch publish time - event time): 1 up to `latency_good_ns`,
  falling linearly to 0 at `latency_bad_ns`.
- consistency: cross-provider agreement: 1 - (consensus interquartile range / price) / the
  outlier threshold, floored at 0; 1 with fewer than two providers (nobody disagrees).

score = 0.3 completeness + 0.4 accuracy + 0.2 timeliness + 0.1 consistency (spec weights).
"""

from __future__ import annotations

import numpy as np

from mdstream.core.consensus import Consensus
from mdstream.core.quality.config import SCORE_WEIGHTS


def completeness(fresh: int, known: int, received: int, missing: int) -> float:
    share = fresh / known if known else 1.0
    arrived = received / (received + missing) if received + missing else 1.0
    return float(share * arrived)


def accuracy(deviation: np.ndarray, outlier_rel: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        score = 1.0 - np.clip(deviation / outlier_rel, 0.0, 1.0)
    return np.where(np.isnan(deviation), 1.0, score)


def timeliness(latency_ns: np.ndarray, good_ns: int, bad_ns: int) -> np.ndarray:
    return 1.0 - np.clip((latency_ns - good_ns) / (bad_ns - good_ns), 0.0, 1.0)


def consistency(consensus: Consensus | None, outlier_rel: float) -> float:
    if consensus is None or consensus.providers < 2:
        return 1.0
    return float(1.0 - min(1.0, consensus.spread / outlier_rel))


def combine(
    completeness: np.ndarray | float,
    accuracy: np.ndarray | float,
    timeliness: np.ndarray | float,
    consistency: np.ndarray | float,
) -> np.ndarray:
    w = SCORE_WEIGHTS
    return np.asarray(
        w["completeness"] * np.asarray(completeness)
        + w["accuracy"] * np.asarray(accuracy)
        + w["timeliness"] * np.asarray(timeliness)
        + w["consistency"] * np.asarray(consistency),
        dtype=np.float64,
    )
