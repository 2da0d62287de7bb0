"""The Pulsar mirror process (`mdstream mirror`; Procfile `mirror`): wiring only.

Not a faust agent (see `mdstream.distribution.mirror` for why); faust's autodiscovery imports this
module in every worker, so everything it needs is imported when it runs, not here.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdstream.distribution.mirror import MirrorStats, PulsarMirror
    from mdstream.settings import Settings


def build(settings: Settings) -> PulsarMirror:
    from mdstream.bus.registry import contract_ids
    from mdstream.core.contracts import ContractSet
    from mdstream.distribution.mirror import PulsarMirror

    master = settings.pipeline.instruments

    def exchange_of(symbol: str, at_ns: int) -> str | None:
        if master is None:
            return None
        try:
            return master.resolve(symbol, at_ns).mic
        except (KeyError, LookupError, ValueError):
            return None

    return PulsarMirror(
        settings.bootstrap,
        settings.mirror_topics or settings.topics.mirrored(),
        settings.pulsar_url,
        settings.pulsar_admin_url,
        group=f"{settings.app_id}-pulsar-mirror",
        contracts=ContractSet.load(contract_ids(settings)),
        exchange_of=exchange_of,
        instance=settings.mirror_instance,
    )


def run(settings: Settings, should_stop: Callable[[], bool] | None = None) -> MirrorStats:
    """Until SIGTERM/SIGINT (or `should_stop`): a clean stop commits what Pulsar acknowledged."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return build(settings).run(lambda: stopping or bool(should_stop and should_stop()))
