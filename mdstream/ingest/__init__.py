"""The ingestion edge: provider connections, rate limits, circuit breakers, failover, backfill."""
