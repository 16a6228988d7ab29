"""The gateway's settings (same apps, middleware, database), routed to the bare endpoint."""

from __future__ import annotations

from tollgate.settings import *  # noqa: F403

ROOT_URLCONF = "bench.bare.urls"
ASGI_APPLICATION = "bench.bare.asgi.application"
