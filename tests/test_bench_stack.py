"""The bench's PostgreSQL database for gateway-postgres: its own, made for the run and dropped."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psycopg
import pytest
from services import reachable

from bench.stack import create_database, drop_database

SERVER = "postgres://postgres@127.0.0.1:5432/postgres"


def test_gateway_postgres_gets_a_database_of_its_own_dropped_after_the_run() -> None:
    if not reachable("postgres"):
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL does not answer on 127.0.0.1:5432, and CI=true")
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    made = create_database(SERVER)
    name = urlsplit(made).path.lstrip("/")
    try:
        assert name.startswith("tollgate_bench_")
        assert urlsplit(made)._replace(path="") == urlsplit(SERVER)._replace(path="")
        left_open = psycopg.connect(made)  # a gateway's connection the stop did not close
        try:
            assert left_open.execute("SELECT current_database()").fetchone() == (name,)
            drop_database(SERVER, made)
        finally:
            left_open.close()
        with psycopg.connect(SERVER) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            assert found.fetchall() == []
    finally:
        drop_database(SERVER, made)  # IF EXISTS: a failed check leaves no database behind
