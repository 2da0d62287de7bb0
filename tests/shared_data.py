"""Where the real market data lives (../shared/data), and a skip marker for when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("MDSTREAM_SHARED_DATA", _DEFAULT))


def shared_path(*parts: str) -> Path:
    """Path of a file under ../shared/data, skipping the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (see ../shared/data/CATALOG.md)")
    return path
