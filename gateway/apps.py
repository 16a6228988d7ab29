from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Tollgate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway import production  # noqa: F401 - registers the deploy checks
        from gateway.upstream_keys import checks  # noqa: F401 - registers the system checks
        from gateway.usage.groups import ensure_usage_viewer_group

        # After django.contrib.auth's handler (auth is listed first), so the permissions exist.
        post_migrate.connect(ensure_usage_viewer_group, sender=self)
