"""The ASGI application: Django, plus the lifespan events Django's own handler does not speak.

On startup the ledger writer starts (replaying any spooled rows) and the config is validated, so a
bad config.toml stops the server at once with a message naming the key. On shutdown the upstream
HTTP clients are closed and every queued ledger row is written.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from asgiref.sync import sync_to_async
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

django_application = get_asgi_application()

from gateway import runtime  # noqa: E402 - needs the app registry that the line above loads

log = logging.getLogger("tollgate")

Scope = dict[str, Any]


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                current = runtime.get_runtime()
                current.ledger.start()
            except Exception as exc:  # reported to the server, which refuses to start
                log.error("startup failed: %s", exc)
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            current = runtime.get_runtime()
            await current.factory.aclose()
            await sync_to_async(current.ledger.stop, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_application(scope, receive, send)
