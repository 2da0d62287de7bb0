"""The Faust app: settings, topics and contracts. Run it with `faust -A mdstream.app worker`."""

from __future__ import annotations

import faust
from faust.stores import STORES

from mdstream.bus.eos import EosApp, EosTableManager
from mdstream.bus.kafka import ensure_topics
from mdstream.bus.registry import contract_ids
from mdstream.core.contracts import ContractSet
from mdstream.ops import worker as ops_worker
from mdstream.settings import settings

# faust-streaming 0.15 names its RocksDB store `rocksdb://` and runs it on rocksdict when the
# python-rocksdb binding is absent; `rocksdict://` says which driver we mean.
STORES.aliases.setdefault("rocksdict", "faust.stores.rocksdb:Store")


class MdstreamApp(EosApp):
    async def on_first_start(self) -> None:
        # Outputs go to the input's partition number: every topic needs the same partition count.
        ensure_topics(
            settings.bootstrap,
            (
                settings.topics.raw,
                *settings.topics.outputs(),
                *settings.topics.corporate_action_topics(),
            ),
            settings.partitions,
        )
        ensure_topics(
            settings.bootstrap, settings.topics.alerts_by_severity().values(), settings.partitions
        )
        ensure_topics(
            settings.bootstrap,
            (settings.topics.consensus,),
            settings.partitions,
            {"cleanup.policy": "compact"},
        )
        await super().on_first_start()


app = MdstreamApp(
    settings.app_id,
    broker=settings.broker,
    store=settings.store,
    processing_guarantee=settings.processing_guarantee,
    topic_partitions=settings.partitions,
    datadir=str(settings.data_dir),
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    # Bytes per partition per fetch: at faust's 1 MiB a fetch held ~20 batches of 1,000 ticks and
    # the worker idled half the time waiting for the next one (217 → 534 msgs/s at 16 MiB).
    consumer_max_fetch_size=16 * 1024**2,
    web_tables_enabled=True,  # /table/<name>/<key>/ for debugging; bound to loopback by default
    broker_commit_interval=settings.commit_interval_s,
    # A SIGKILLed member holds its partitions until its session expires: keep that short.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    table_standby_replicas=settings.standby_replicas,
    consumer_auto_offset_reset="earliest",
    topic_disable_leader=True,
    TableManager=EosTableManager,
    # Table web views answer for any key from any worker: routed to the partition's owner.
    Router=ops_worker.KeyRouter,
    autodiscover=["mdstream_agents", "mdstream_tables"],
    origin="mdstream",
)


def _topic(name: str) -> faust.TopicT:
    """Topics carry Confluent-framed Avro bytes; decoding is ours, so bad bytes reach the DLQ."""
    return app.topic(
        name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
    )


raw_topic = _topic(settings.topics.raw)
normalized_topic = _topic(settings.topics.normalized)
alerts_topic = _topic(settings.topics.alerts)
dead_letter_topic = _topic(settings.topics.dead_letter)
announcements_topic = _topic(settings.topics.announcements)
corporate_actions_topic = _topic(settings.topics.corporate_actions)
severity_alert_topics = {
    sev: _topic(name) for sev, name in settings.topics.alerts_by_severity().items()
}
consensus_topic = _topic(settings.topics.consensus)

contracts = ContractSet.load(contract_ids(settings))

#: Metrics (a faust Sensor), /metrics /healthz /readyz on the web port, the broker lag probe.
ops = ops_worker.install(
    app,
    contracts,
    settings.topics,
    settings.bootstrap,
    settings.app_id,
    stall_s=settings.stall_s,
)
