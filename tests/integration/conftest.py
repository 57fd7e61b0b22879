"""Fixtures of the job store and job manager tests: each test gets a fresh store of each kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.job_processes import new_spec, open_spec


@pytest.fixture(params=["sqlite", "redis"])
def job_store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh store lives: its own SQLite file, or its own key prefix in the session's redis-server."""
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    return new_spec(request.param, tmp_path, redis_url)


@pytest.fixture
def job_store(job_store_spec: str):
    """The store ``job_store_spec`` names, closed after the test."""
    opened = open_spec(job_store_spec)
    yield opened
    opened.close()
