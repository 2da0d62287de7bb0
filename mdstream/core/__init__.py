"""The pure domain core: contracts, instruments, validation, quality, consensus, bars, corporate
actions and the processing step. It may import only the standard library, numpy, polars,
fastavro, scikit-learn, exchange_calendars, python-stdnum and itself: no Faust, Kafka, database,
cache or network (enforced by tests/test_layout.py)."""
