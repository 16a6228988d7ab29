"""System checks (``manage.py check``, and every management command that runs them)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from gateway.upstream_keys.credentials import check_secret_key


@register("tollgate", deploy=False)
def secret_key_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Upstream keys are stored, so TOLLGATE_SECRET_KEY must be set and must decrypt them."""
    try:
        check_secret_key()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="tollgate.E001")]
    except DatabaseError:  # not migrated yet: nothing stored, nothing to check
        return []
    return []
