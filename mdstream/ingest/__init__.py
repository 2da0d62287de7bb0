"""The ingestion edge: provider connections, rate limits, circuit breakers, failover, backfill,
and readers of public data files. It may import the core, the providers' parsers and the bus."""
