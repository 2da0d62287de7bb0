"""Faust tables: the pipeline's RocksDB-backed, changelogged state."""
