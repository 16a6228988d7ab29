"""``manage.py generate_usage --rows N``: fill the ledger with realistic synthetic usage, to
measure the reports and the admin at scale.

Tenants, keys and models are picked with skewed (Zipf-like) weights, so a few tenants and models
carry most of the traffic as in real life; calls are spread over ``--months`` months ending now,
with a mix of statuses (about 3% errors). Rows go in with PostgreSQL's ``COPY`` (``executemany``
elsewhere) in batches, then the rollup of the days covered is rebuilt from the ledger
(``rebuild_rollup``, as ``rebuild_usage_daily`` does). Generated tenants are named ``gen-NNN``.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

from gateway.models import ApiKey, Tenant, UsageRecord
from gateway.usage.ledger_rows import insert_fields
from gateway.usage.rollup import rebuild_rollup

MODELS = (  # (requested model, provider, USD per Mtok in, out)
    ("gpt-4o-mini", "openai", 0.15, 0.6),
    ("gpt-4o", "openai", 2.5, 10.0),
    ("claude-3-5-haiku", "anthropic", 0.8, 4.0),
    ("claude-sonnet-4", "anthropic", 3.0, 15.0),
    ("deepseek-chat", "deepseek", 0.27, 1.1),
    ("llama-3.1-70b", "groq", 0.59, 0.79),
    ("text-embedding-3-small", "openai", 0.02, 0.0),
    ("ollama/llama3.2", "ollama", 0.0, 0.0),
    ("o3-mini", "openai", 1.1, 4.4),
    ("qwen2.5-72b", "together", 1.2, 1.2),
    ("mistral-large", "mistral", 2.0, 6.0),
    ("gemini-flash", "google", 0.1, 0.4),
)
STATUSES = (  # (status, error type, error message, share of calls)
    (200, "", "", 0.97),
    (429, "rate_limit_exceeded", "Rate limit reached: 60 requests per minute.", 0.015),
    (502, "upstream_error", "The upstream provider answered with HTTP 500.", 0.01),
    (400, "invalid_request", "'messages' must be a non-empty list.", 0.004),
    (499, "client_disconnected", "", 0.001),
)


def zipf_weights(count: int, exponent: float = 1.1) -> list[float]:
    return [1 / (rank**exponent) for rank in range(1, count + 1)]


class Command(BaseCommand):
    help = "Generate synthetic ledger rows (skewed, over months) and their daily rollup."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, required=True)
        parser.add_argument("--tenants", type=int, default=60)
        parser.add_argument("--keys-per-tenant", type=int, default=4)
        parser.add_argument("--months", type=int, default=4)
        parser.add_argument("--batch", type=int, default=20_000)
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args: Any, **options: Any) -> None:
        rng = random.Random(options["seed"])
        keys = self._keys(options["tenants"], options["keys_per_tenant"])
        key_weights = zipf_weights(len(keys))
        model_weights = zipf_weights(len(MODELS), 0.9)
        status_weights = [weight for *_, weight in STATUSES]
        end = datetime.now(UTC)
        span = timedelta(days=30 * options["months"]).total_seconds()
        started, done = time.monotonic(), 0
        while done < options["rows"]:
            count = min(options["batch"], options["rows"] - done)
            picked_keys = rng.choices(keys, key_weights, k=count)
            picked_models = rng.choices(MODELS, model_weights, k=count)
            picked_status = rng.choices(STATUSES, status_weights, k=count)
            rows = []
            for key, (model, provider, price_in, price_out), (status, error, message, _) in zip(
                picked_keys, picked_models, picked_status, strict=True
            ):
                ok = status < 400 or status == 499
                prompt = int(rng.lognormvariate(6.5, 1.0)) if ok else None
                completion = int(rng.lognormvariate(5.0, 1.0)) if ok else None
                cost = (prompt or 0) * price_in / 1e6 + (completion or 0) * price_out / 1e6
                rows.append(
                    {
                        "created_at": end - timedelta(seconds=rng.random() * span),
                        "request_id": "gen_" + uuid.UUID(int=rng.getrandbits(128)).hex,
                        "tenant_id": key[1],
                        "api_key_id": key[0],
                        "requested_model": model,
                        "provider": provider,
                        "upstream_model": model.split("/")[-1],
                        "stream": rng.random() < 0.4,
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": None if prompt is None else prompt + (completion or 0),
                        "cost_usd": Decimal(f"{cost:.10f}"),
                        "status_code": status,
                        "error_type": error,
                        "error_message": message,
                        "latency_ms": int(rng.lognormvariate(6.0, 0.8)),
                    }
                )
            self._insert(rows)
            done += count
            self.stdout.write(f"{done:,} rows ({time.monotonic() - started:.0f} s)")
        first = (end - timedelta(seconds=span)).date()
        written = rebuild_rollup(first, end.date())
        self.stdout.write(
            f"{done:,} ledger rows, {written:,} rollup rows for {first} to {end.date()}, "
            f"in {time.monotonic() - started:.0f} s"
        )

    def _keys(self, tenants: int, per_tenant: int) -> list[tuple[int, int]]:
        """(key id, tenant id) of the generated tenants' keys, created when missing."""
        result: list[tuple[int, int]] = []
        for n in range(tenants):
            tenant, _ = Tenant.objects.get_or_create(name=f"gen-{n:03d}")
            keys = list(ApiKey.objects.filter(tenant=tenant).order_by("pk"))
            while len(keys) < per_tenant:
                keys.append(ApiKey.objects.issue(tenant, name=f"gen-key-{len(keys)}")[0])
            result.extend((key.pk, tenant.pk) for key in keys[:per_tenant])
        return result

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        fields = insert_fields()
        values = [
            [
                field.get_db_prep_save(
                    row[field.attname] if field.attname in row else field.get_default(),
                    connection,
                )
                for field in fields
            ]
            for row in rows
        ]
        table = connection.ops.quote_name(UsageRecord._meta.db_table)
        columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for value in values:
                        copy.write_row(value)
            else:
                placeholders = ", ".join(["%s"] * len(fields))
                cursor.executemany(
                    f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", values
                )
