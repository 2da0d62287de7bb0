"""mdstream: a market-data stream processor on Faust."""

__version__ = "0.1.0"
