"""Django's stock ASGI application for the floor endpoint."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.floor.settings")

application = get_asgi_application()
