"""Pure provider parsing: frames, files and SDK objects in; raw tick and bar records out.
It may import only the core and parsing libraries: no I/O (enforced by tests/test_layout.py)."""
