"""The ASGI application: ``/v1`` and the probes to the API's lean handler, everything else (the
admin, the reports) to Django's stock handler, and the lifespan events.

``GET /metrics`` (Prometheus) is answered before Django too, when TOLLGATE_METRICS_TOKEN is set
(``gateway.telemetry.scrape``); else Django answers it 404.

Lifespan: on startup DJANGO_SECRET_KEY must be set unless in DEBUG (``gateway.production``),
config.toml is validated (a bad file stops the server at once with a message naming the key),
the upstream keys stored in the admin are decrypted (a missing or wrong TOLLGATE_SECRET_KEY stops
the server) and the ledger writer starts, replaying any spooled rows, and the interpreter is set
for serving (``tune_interpreter``: the garbage collector and the GIL); on shutdown the upstream
HTTP clients are closed, pending counter updates are sent and every queued ledger row is written
(``gateway.runtime``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application
from granian.utils.proxies import wrap_asgi_with_proxy_headers

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")

django_application = get_asgi_application()

from gateway import runtime  # noqa: E402 - needs the app registry loaded by the line above
from gateway.api.handler import api_application  # noqa: E402
from gateway.production import require_secret_key  # noqa: E402
from gateway.telemetry import scrape  # noqa: E402

log = logging.getLogger("tollgate")

API_PREFIX = "/v1/"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
"""Served by the lean handler too, without Django's stock middleware: load balancers and the
kubelet call them by the host's address over plain http, which the admin's ALLOWED_HOSTS check
would refuse (400) and its https redirect would send elsewhere (docs/deploy.md)."""
METRICS_TOKEN = settings.TOLLGATE_METRICS_TOKEN if settings.TOLLGATE_METRICS else ""
GIL_SWITCH_SECONDS = 0.0005
"""How long a thread may keep the GIL while another waits for it (Python's default: 5 ms). The
event loop shares the GIL with the ledger writer, whose batches are Python work of tens of
milliseconds: each time the loop came back from the kernel while the writer held the GIL, it
waited up to the whole interval, several times in one call: p99 at c=1 was 10-11 ms against a
p50 of 0.75 ms. At 0.5 ms it was 2.6-4.3 ms against 4.4-6.8 ms at 5 ms in alternating runs (with
the writer's lighter rows), throughput unchanged (bench/README.md, issue #17's seventh pass)."""


def tune_interpreter() -> None:
    """What a serving worker's interpreter is set to once started, for every request after."""
    # What startup loaded (Django, the app, config) lives as long as the process: out of the
    # collector's sight, a full collection (which a large request body's parse can trigger)
    # walks only what requests allocate: milliseconds, not tens.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                require_secret_key()
                await runtime.get_runtime().start()
                runtime.get_runtime().drain.watch_signals(settings.TOLLGATE_SHUTDOWN_GRACE_SECONDS)
                tune_interpreter()
            except Exception as exc:  # reported to the server, which refuses to start
                log.error("startup failed: %s", exc)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await runtime.get_runtime().aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and (
        scope["path"].startswith(API_PREFIX) or scope["path"] in PROBE_PATHS
    ):
        await api_application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and scope["path"] == scrape.PATH and METRICS_TOKEN:
        await scrape.answer(scope, send, METRICS_TOKEN, runtime.get_runtime())
    else:
        await django_application(scope, receive, send)


granian_application = wrap_asgi_with_proxy_headers(
    application, os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
)
"""The application as granian serves it (``make serve SERVER=granian``, docs/deploy.md). Unlike
uvicorn, granian reads no ``X-Forwarded-For``: a request from a trusted proxy
(FORWARDED_ALLOW_IPS, the name uvicorn reads, comma-separated addresses or networks, ``*`` for
any; 127.0.0.1 by default) gets the client address the proxy forwarded, the one the
failed-authentication throttle counts."""
