"""``manage.py set_limits --tenant NAME [--key-prefix PREFIX] [--models a,b] [--rpm N] [--tpm N]
[--budget-usd X --period daily|monthly|total]``: set a tenant's limits, or one of its keys'.

Only the options given change. An empty value clears that limit (``--rpm ''``, ``--models ''``,
``--budget-usd ''``). Running gateways apply the change within TOLLGATE_AUTH_CACHE_SECONDS.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.models import BUDGET_PERIODS, ApiKey, Limits, Tenant


def _count(value: str) -> int | None:
    if value == "":
        return None
    if not value.isdigit():
        raise CommandError(f"expected a whole number or '' (no limit), got {value!r}")
    return int(value)


def _usd(value: str) -> Decimal | None:
    if value == "":
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(
            f"--budget-usd: expected an amount in USD or '', got {value!r}"
        ) from None
    if amount < 0 or not amount.is_finite():
        raise CommandError(f"--budget-usd: expected an amount >= 0, got {value!r}")
    return amount


class Command(BaseCommand):
    help = "Set the model allow-list, rate limits and budget of a tenant or of one of its keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant name.")
        parser.add_argument(
            "--key-prefix", help="The key's visible start (12 characters, as the admin shows it)."
        )
        parser.add_argument("--models", help="Allowed models, comma-separated; '' allows all.")
        parser.add_argument("--rpm", help="Requests per minute; '' for no limit.")
        parser.add_argument("--tpm", help="Tokens per minute; '' for no limit.")
        parser.add_argument("--budget-usd", help="Spending cap in USD; '' for no cap.")
        parser.add_argument("--period", choices=[value for value, _ in BUDGET_PERIODS])

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(name=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant named {options['tenant']!r}")
        target: Limits = tenant
        what = f"tenant {tenant.name}"
        if options["key_prefix"]:
            key = ApiKey.objects.filter(tenant=tenant, prefix=options["key_prefix"]).first()
            if key is None:
                raise CommandError(
                    f"tenant {tenant.name} has no key starting {options['key_prefix']!r}"
                )
            target, what = key, f"key {key.prefix}… of tenant {tenant.name}"
        if options["models"] is not None:
            names = [name.strip() for name in options["models"].split(",") if name.strip()]
            target.allowed_models = ",".join(names)
        if options["rpm"] is not None:
            target.rpm_limit = _count(options["rpm"])
        if options["tpm"] is not None:
            target.tpm_limit = _count(options["tpm"])
        if options["budget_usd"] is not None:
            target.budget_usd = _usd(options["budget_usd"])
        if options["period"] is not None:
            target.budget_period = options["period"]
        target.save()
        self.stdout.write(
            f"Limits of {what}: models {target.allowed_models or 'all'}, "
            f"rpm {target.rpm_limit or 'unlimited'}, tpm {target.tpm_limit or 'unlimited'}, "
            f"budget {'none' if target.budget_usd is None else f'${target.budget_usd}'} "
            f"({target.budget_period})."
        )
