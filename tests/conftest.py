"""Shared fixtures: the real local services, started once and left running for later runs."""

from __future__ import annotations

import pytest

from mdstream.services import Endpoints, ensure_up


@pytest.fixture(scope="session")
def services() -> Endpoints:
    """Kafka/PostgreSQL/Redis endpoints; never stopped, so re-runs skip the slow cold start."""
    return ensure_up()
