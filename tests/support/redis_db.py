"""A flushed Redis test database for the tests that need one (tenant controls, outages,
routing). They read REDIS_URL; without it they skip, but fail when CI=true (the Makefile's
PostgreSQL run sets REDIS_URL=redis://127.0.0.1:6379/15)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def redis_url_or_skip() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("REDIS_URL is not set, and CI=true: the Redis tests must run")
        pytest.skip("REDIS_URL is not set")
    return url


def flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """REDIS_URL, its database flushed before and after the test."""
    url = redis_url_or_skip()
    flush(url)
    yield url
    flush(url)
