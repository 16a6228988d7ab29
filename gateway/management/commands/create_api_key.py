"""``manage.py create_api_key --tenant NAME``: issue a key, creating the tenant if needed.

The raw key is the last line of the output, so scripts can take it with ``tail -n 1``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from gateway.models import ApiKey, Tenant


class Command(BaseCommand):
    help = "Create an API key for a tenant (created if it does not exist) and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant name.")
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument(
            "--expires-in-days",
            type=int,
            default=None,
            help="Expire the key after this many days (default: never).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant, created = Tenant.objects.get_or_create(name=options["tenant"])
        if created:
            self.stdout.write(f"Created tenant {tenant.name}.")
        days = options["expires_in_days"]
        expires_at = timezone.now() + timedelta(days=days) if days else None
        key, raw = ApiKey.objects.issue(tenant, name=options["name"], expires_at=expires_at)
        self.stdout.write(
            f"Created key {key.prefix}… for tenant {tenant.name}. It is shown once; store it now:"
        )
        self.stdout.write(raw)
