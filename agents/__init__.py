"""Faust agents: thin wiring of topics and tables to the domain core in `mdstream`."""
