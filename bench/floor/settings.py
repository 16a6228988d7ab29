"""Nothing but what Django needs to answer: no apps, no middleware, no database."""

from __future__ import annotations

SECRET_KEY = "bench-floor"  # answers one fixed body, signs nothing
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
ROOT_URLCONF = "bench.floor.urls"
USE_TZ = True
LOGGING_CONFIG = None
