"""Per-partition pipeline state: open bars, provider freshness, stream clocks; and consensus."""

from __future__ import annotations

from mdstream.app import app
from mdstream.settings import settings

#: Keyed by instrument symbol (plus one stream-clock key per partition):
#: see mdstream.core.processor.
pipeline_state_table = app.Table(
    "pipeline-state",
    default=None,
    partitions=settings.partitions,
    help="Open bars, provider freshness and stream clocks of the raw → bars step.",
)

#: Keyed by instrument symbol: the cross-provider consensus price and its uncertainty.
consensus_table = app.Table(
    "consensus",
    default=None,
    partitions=settings.partitions,
    help="Cross-provider consensus price per instrument (weighted median, p25/p75).",
)
