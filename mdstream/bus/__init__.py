"""The message bus at the edge: Kafka topics and clients (confluent-kafka), the schema registry and
the exactly-once machinery under Faust. It may import the core, settings and Kafka libraries."""
