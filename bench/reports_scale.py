"""Time the usage report, the ledger changelist (with its totals), a record, and the tenant and
key pages (with their spend) on a large database (README: Usage reports).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate_scale \\
        .venv/bin/python manage.py generate_usage --rows 1000000
    DATABASE_URL=... DJANGO_ALLOWED_HOSTS=testserver .venv/bin/python bench/reports_scale.py

Each page is fetched with Django's test client (server time: routing, queries, template), several
times after one warm-up; the median and the worst are printed, with the number of queries.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from gateway.models import ApiKey, Tenant, UsageDaily, UsageRecord  # noqa: E402

RUNS = int(os.environ.get("RUNS", "7"))


def timed(client: Client, url: str) -> None:
    client.get(url)  # warm-up
    times = []
    for _ in range(RUNS):
        reset_queries()
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    print(f"| `{url[:90]}` | {statistics.median(times):.0f} | {max(times):.0f} | {len(queries)} |")


def main() -> None:
    user, _ = User.objects.get_or_create(username="scale-admin", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    today = datetime.now(UTC).date()
    last_month_end = today.replace(day=1) - timedelta(days=1)
    last_month = f"start={last_month_end.replace(day=1)}&end={last_month_end}"
    big = Tenant.objects.get(name="gen-000").pk
    big_key = ApiKey.objects.filter(tenant_id=big).order_by("pk").first()
    failed = UsageRecord.objects.filter(status_code=502).order_by("-created_at").first()
    this_month = (
        f"created_at__gte={today.replace(day=1)}+00%3A00%3A00%2B00%3A00"
        f"&created_at__lt={(today.replace(day=28) + timedelta(days=4)).replace(day=1)}"
        "+00%3A00%3A00%2B00%3A00"
    )
    print(
        f"{connection.vendor}: {UsageRecord.objects.count():,} ledger rows, "
        f"{UsageDaily.objects.count():,} rollup rows\n"
    )
    print("| page | median ms | max ms | queries |\n|---|---:|---:|---:|")
    for url in (
        f"/admin/reports/usage/?{last_month}",
        "/admin/reports/usage/",
        f"/admin/reports/usage/?{last_month}&tenant={big}",
        f"/admin/reports/usage/?{last_month}&model=gpt-4o",
        "/admin/gateway/usagerecord/",
        "/admin/gateway/usagerecord/?p=50",
        f"/admin/gateway/usagerecord/?tenant__id__exact={big}",
        "/admin/gateway/usagerecord/?requested_model=gpt-4o&status_class=errors",
        "/admin/gateway/usagerecord/?created_at__gte=2026-10-01+00%3A00%3A00%2B00%3A00"
        "&created_at__lt=2026-11-01+00%3A00%3A00%2B00%3A00",
        "/admin/gateway/usagedaily/",
        f"/admin/gateway/usagerecord/?{this_month}&tenant__id__exact={big}",
        f"/admin/gateway/usagerecord/?{this_month}&status_class=5xx",
        f"/admin/gateway/usagerecord/{failed.pk if failed else 1}/change/",
        "/admin/gateway/tenant/",
        f"/admin/gateway/tenant/{big}/change/",
        "/admin/gateway/apikey/",
        f"/admin/gateway/apikey/{big_key.pk if big_key else 1}/change/",
    ):
        timed(client, url)


if __name__ == "__main__":
    main()
