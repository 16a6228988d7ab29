"""``manage.py add_provider_key --provider NAME --label L [--weight N] [--inactive]``: store an
upstream key, read from standard input (never from the command line, where ``ps`` and the shell
history would show it), encrypted with TOLLGATE_SECRET_KEY.

    printf %s "$OPENAI_KEY" | python manage.py add_provider_key --provider openai --label main

A key with the same provider and label is replaced. Running gateways use it within
TOLLGATE_CREDENTIALS_REFRESH_SECONDS.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.models import ProviderKey
from gateway.runtime import get_runtime
from gateway.upstream_keys import secrets
from gateway.upstream_keys.credentials import set_secret


class Command(BaseCommand):
    help = "Store an upstream API key (read from standard input) for a provider of config.toml."
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--provider", required=True, help="A provider name from config.toml.")
        parser.add_argument("--label", required=True, help="A name for the key.")
        parser.add_argument("--weight", type=int, default=1, help="Share of calls (default 1).")
        parser.add_argument("--inactive", action="store_true", help="Store it switched off.")

    def handle(self, *args: Any, **options: Any) -> None:
        names = list(get_runtime().config.providers)
        if options["provider"] not in names:
            raise CommandError(
                f"unknown provider {options['provider']!r}: config.toml has {', '.join(names)}"
            )
        if options["weight"] < 0:
            raise CommandError("--weight must be >= 0")
        if not secrets.is_configured():
            raise CommandError(f"set {secrets.ENV_NAME}: upstream keys are stored encrypted")
        stdin = options.get("stdin") or sys.stdin
        secret = stdin.read().strip()
        if not secret:
            raise CommandError("no key on standard input")
        key = ProviderKey.objects.filter(
            provider=options["provider"], label=options["label"]
        ).first() or ProviderKey(provider=options["provider"], label=options["label"])
        replaced = key.pk is not None
        set_secret(key, secret)
        key.weight = options["weight"]
        key.is_active = not options["inactive"]
        key.save()
        self.stdout.write(
            f"{'Replaced' if replaced else 'Stored'} the {key.provider} key {key.label!r} "
            f"(…{key.last4}, weight {key.weight}{', inactive' if not key.is_active else ''})."
        )
