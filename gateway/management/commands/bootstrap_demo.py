"""``manage.py bootstrap_demo``: the admin user, a demo tenant and key, for ``make run``.

The generated admin password and demo key are kept in ``var/demo-credentials.json`` (mode 0600,
never committed) so that running it again prints the same ones instead of piling up new keys.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from gateway.models import ApiKey, Tenant, hash_key
from providers.config import load_config


class Command(BaseCommand):
    help = "Create the admin user and a demo tenant with a key; print how to use them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1:8000")

    def handle(self, *args: Any, **options: Any) -> None:
        path = settings.VAR_DIR / "demo-credentials.json"
        saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}

        User = get_user_model()
        password = saved.get("admin_password") or secrets.token_urlsafe(12)
        admin = User.objects.filter(username="admin").first()
        if admin is None:
            User.objects.create_superuser("admin", "admin@localhost", password)
        elif not admin.check_password(password):
            password = "(unchanged: set by you)"

        tenant, _ = Tenant.objects.get_or_create(name="demo")
        raw_key = saved.get("demo_key", "")
        key = ApiKey.objects.filter(key_hash=hash_key(raw_key)).first() if raw_key else None
        if key is None or not key.is_usable():
            key, raw_key = ApiKey.objects.issue(tenant, name="demo")

        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps({"admin_password": password, "demo_key": raw_key}))

        config = load_config(settings.TOLLGATE_CONFIG)
        missing = [
            f"{name} (${provider.api_key_env})"
            for name, provider in config.providers.items()
            if provider.api_key_env and not os.environ.get(provider.api_key_env)
        ]
        usable = [
            alias
            for alias, model in config.models.items()
            if any(
                (env := config.providers[deployment.provider].api_key_env) and os.environ.get(env)
                for deployment in model.deployment_list()
            )
        ]
        demo = "demo" if "demo" in config.models else None
        model = usable[0] if usable else demo or next(iter(config.models), "gpt-4o-mini")
        host = options["host"]
        self.stdout.write(
            f"""
Tollgate is ready.
  Admin:     http://{host}/admin/   user: admin   password: {password}
  Demo key:  {raw_key}   (tenant: demo)

  curl http://{host}/v1/chat/completions \\
    -H "Authorization: Bearer {raw_key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}]}}'
"""
        )
        if model == demo:
            self.stdout.write(
                '\n  "demo" is answered by the demo upstream that make run starts (canned text).\n'
                "  For a real model: export OPENAI_API_KEY=sk-... (or ANTHROPIC_API_KEY, ...)"
                ' before make run, and call "gpt-4o-mini" (models: config.toml).\n'
            )
        if missing:
            self.stdout.write(
                "  No upstream key in the environment for: "
                + ", ".join(missing)
                + ".\n  Calls to those providers answer 503, naming the variable, until you"
                + " export it.\n"
            )
