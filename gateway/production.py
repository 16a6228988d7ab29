"""What a production server needs that development does without: DJANGO_SECRET_KEY; and the
deploy checks of what would stop its workers from starting (config.toml).

Settings fall back to a development key (var/secret_key) or to one made up per process, so that
tests, type checks and one-off commands run without it. A server cannot: its workers and hosts
must share one key, or an admin session signed by one worker is refused by the next. So without
DEBUG the server refuses to start (``tollgate.asgi``'s lifespan), and ``manage.py check
--deploy`` reports it. The systemd unit runs that check before it starts the server: uvicorn's
supervisor stops when a worker fails to start, but exits 0, and granian (2.8, the other supported
server) restarts such a worker over and over, so a start that cannot work must stop before it
(docs/deploy.md).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

from providers.config import ConfigError, load_config

MISSING_SECRET_KEY = (
    "DJANGO_SECRET_KEY is not set: set it to a long random value, the same for every process "
    'and host (python3 -c "import secrets; print(secrets.token_urlsafe(50))"), or set '
    "DJANGO_DEBUG=true for local development."
)


def require_secret_key() -> None:
    if not settings.DEBUG and not settings.SECRET_KEY_FROM_ENVIRONMENT:
        raise ImproperlyConfigured(MISSING_SECRET_KEY)


@register(Tags.security, deploy=True)
def secret_key_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        require_secret_key()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="tollgate.E002")]
    return []


@register(Tags.security, deploy=True)
def config_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """config.toml (TOLLGATE_CONFIG) is read and valid: a worker refuses to start otherwise."""
    try:
        load_config(settings.TOLLGATE_CONFIG)
    except ConfigError as exc:
        return [Error(str(exc), id="tollgate.E003")]
    return []
