"""Health for load balancers and Kubernetes: ``/healthz`` (the process answers) and ``/readyz``
(it can serve: the database answers, Redis too when it is configured, config.toml is loaded,
the ledger writer runs and keeps up). JSON, no authentication, cheap: each check is bounded by
``CHECK_SECONDS``; ``/readyz`` answers 503 naming what is not ready."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from gateway.runtime import get_runtime
from gateway.usage.ledger import database_answers

CHECK_SECONDS = 2.0
LEDGER_BACKLOG_LIMIT = 10_000
"""More rows than this waiting to be written: the writer is falling behind."""


def _json(data: object, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


async def healthz(request: HttpRequest) -> HttpResponse:
    return _json({"status": "ok"})


async def readyz(request: HttpRequest) -> HttpResponse:
    checks: dict[str, str] = {}
    try:
        current = get_runtime()  # builds it on first use: config.toml is loaded and valid
        checks["config"] = "ok"
    except Exception as exc:
        return _json({"status": "unavailable", "checks": {"config": str(exc)[:200]}}, 503)
    checks["database"] = await _check(sync_to_async(database_answers, thread_sensitive=False)())
    if settings.REDIS_URL and current.shared_health is not None:
        checks["redis"] = await _check(current.shared_health.redis.ping())
    ledger = current.ledger
    if not ledger.alive:
        checks["ledger"] = "the writer is not running"
    elif ledger.backlog > LEDGER_BACKLOG_LIMIT:
        checks["ledger"] = f"falling behind: {ledger.backlog} rows waiting"
    else:
        checks["ledger"] = "ok"
    ready = all(value == "ok" for value in checks.values())
    return _json(
        {"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )


async def _check(probe: Awaitable[object]) -> str:
    try:
        answered = await asyncio.wait_for(probe, CHECK_SECONDS)
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"
    return "ok" if answered else "unavailable"
