"""Pipeline benchmark on a local broker: throughput, tick → bar latency, and a Kafka ceiling.

    python -m benchmarks.pipeline [--seconds N] [--rate-scale X] [--partitions P]
        [--live-seconds N] [--skip throughput|latency|ceiling] [--profile PREFIX] [--keep]

It starts Kafka (only Kafka) through `mdstream.services.ensure_up`, so point MDSTREAM_RUN_DIR /
MDSTREAM_KAFKA_PORT at a stack of your own to leave other people's broker alone. Every phase runs
under its own app id and topic prefix; real `faust -A mdstream.app worker` processes do the work.

1. Throughput: a generated feed is published to the raw topic first, then one worker starts; the
   clock runs from the worker's "Ready" until the group's committed offsets cover every raw message.
2. Latency: a fresh app, its worker idle and assigned, gets a live feed paced at 1× whose event
   times are wall-clock now; a read_committed consumer of the bars topic records, for each 1s bar,
   receive time − window end.
3. Ceiling: bare confluent-kafka consume → produce over the same raw messages, without and with
   transactions (commit every ~100 ms), and the pure processing step in-process (no Kafka).

This is a script that prints numbers, not a test: the machine is shared, figures are indicative.
"""
