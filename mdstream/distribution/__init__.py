"""Distribution edges: the committed Kafka outputs mirrored to Pulsar, latest prices in Redis, a
WebSocket feed with a live page. Routing and conflation rules are pure (`routes`, `latest`'s
ordering rule); the rest is I/O."""
