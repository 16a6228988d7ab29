"""``/healthz`` and ``/readyz`` for load balancers: no key needed, JSON, and ``/readyz`` says
what is not ready (503)."""

from __future__ import annotations

from django.test import AsyncClient


async def test_healthz_answers_without_a_key(db: None) -> None:
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_checks_the_database_config_and_ledger_writer(
    transactional_db: None, gateway_runtime
) -> None:
    current = gateway_runtime(lambda request: None)
    not_started = await AsyncClient().get("/readyz")
    assert not_started.status_code == 503
    body = not_started.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["ledger"] == "the writer is not running"
    assert (body["checks"]["config"], body["checks"]["database"]) == ("ok", "ok")
    current.ledger.start()
    try:
        ready = await AsyncClient().get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ok",
            "checks": {"config": "ok", "database": "ok", "ledger": "ok"},
        }
    finally:
        current.ledger.stop()
