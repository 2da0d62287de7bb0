"""Loopback emulators of the providers' documented websocket and REST protocols (test tools)."""
