"""The ledger in the admin: a list that fits a 1366 px screen with readable figures, the totals of
the filtered rows (from the rollup when the filter allows), and a record's page, grouped."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from support.rows import call

from conftest import TenantKey
from gateway.models import UsageRecord
from gateway.usage.ledger import insert_rows
from gateway.usage.totals import rollup_filter

MARCH = (
    "created_at__gte=2026-03-01+00%3A00%3A00%2B00%3A00"
    "&created_at__lt=2026-04-01+00%3A00%3A00%2B00%3A00"
)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def client(tenants: dict[str, TenantKey]) -> Client:
    alice, bob = tenants["alice"], tenants["bob"]
    insert_rows(
        [
            call(alice, at(2), cost_usd=Decimal("0.0123456789"), stream=True),
            call(
                alice,
                at(3),
                prompt_tokens=12000,
                completion_tokens=3400,
                total_tokens=15400,
                cost_usd=Decimal("12.3456"),
            ),
            call(
                alice,
                at(4),
                prompt_tokens=None,
                completion_tokens=None,
                total_tokens=None,
                cost_usd=0,
                status_code=502,
                error_type="upstream_unavailable",
                error_message="The upstream provider 'fake' answered with HTTP 500.",
            ),
            call(alice, at(5), status_code=429, error_type="rate_limit_exceeded", cost_usd=0),
            call(bob, at(6), model="image-test", image_count=2, cost_usd=Decimal("0.08")),
            call(bob, datetime(2026, 4, 1, 1, tzinfo=UTC)),  # April: outside the range
        ]
    )
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-123456"))
    return client


def test_the_list_shows_the_columns_an_operator_scans(
    client: Client, tenants: dict[str, TenantKey]
) -> None:
    html = client.get(f"/admin/gateway/usagerecord/?{MARCH}").content.decode()
    headers = re.findall(r'<th scope="col"[^>]*>.*?<(?:a|span)[^>]*>([^<]+)<', html, re.S)
    assert [header.lower() for header in headers] == [
        "time (utc)", "tenant", "key", "model", "status", "tokens in → out", "cost", "latency",
    ]  # fmt: skip
    assert "$0.0123<" in html and "$12.35<" in html and "0.0123456789" not in html
    assert "12,000 → 3,400" in html
    assert '<span class="status status-5xx">502</span>' in html
    assert '<span class="status status-4xx">429</span>' in html
    assert '<span class="status status-2xx">200</span>' in html
    assert '<span class="tag">stream</span>' in html and "2 images" in html
    assert "icon-no" not in html and "icon-yes" not in html, "no red crosses for booleans"


def test_totals_of_report_filters_come_from_the_rollup(
    client: Client, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"].tenant.pk
    page = client.get(f"/admin/gateway/usagerecord/?{MARCH}&tenant__id__exact={alice}")
    totals = page.context["totals"]
    assert totals["source"] == "rollup"
    assert (totals["calls"], totals["errors"]) == (4, 2)
    assert totals["cost_usd"] == Decimal("12.3579456789")
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (12200, 3440)
    assert "from the daily rollup" in page.content.decode()
    everything = client.get("/admin/gateway/usagerecord/").context["totals"]
    assert (everything["source"], everything["calls"]) == ("rollup", 6)


def test_totals_of_other_filters_are_summed_over_the_ledger_rows(client: Client) -> None:
    page = client.get(f"/admin/gateway/usagerecord/?{MARCH}&status_class=errors")
    totals = page.context["totals"]
    assert (totals["source"], totals["calls"], totals["errors"]) == ("ledger", 2, 2)
    assert totals["cost_usd"] == 0
    streamed = client.get("/admin/gateway/usagerecord/?stream__exact=1").context["totals"]
    assert (streamed["source"], streamed["calls"]) == ("ledger", 1)
    assert streamed["cost_usd"] == Decimal("0.0123456789")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {}),
        ({"o": "-1", "p": "2"}, {}),
        (
            {"created_at__gte": "2026-03-01 00:00:00+00:00", "created_at__lt": "2026-03-08"},
            {"day__gte": date(2026, 3, 1), "day__lt": date(2026, 3, 8)},
        ),
        ({"tenant__id__exact": "3", "requested_model": "m"}, {"tenant_id": "3", "model": "m"}),
        ({"created_at__gte": "2026-03-01 09:30:00+00:00"}, None),  # not a whole day
        ({"created_at__gte": "2026-03-01 00:00:00+02:00"}, None),  # midnight, but not UTC's
        ({"status_class": "5xx"}, None),
        ({"q": "req_1"}, None),
    ],
)
def test_which_filters_the_rollup_can_answer(
    params: dict[str, str], expected: dict[str, object] | None
) -> None:
    assert rollup_filter(params) == expected


def test_a_record_is_grouped_and_keeps_its_error_message(
    client: Client, tenants: dict[str, TenantKey]
) -> None:
    failed = UsageRecord.objects.get(status_code=502)
    html = client.get(f"/admin/gateway/usagerecord/{failed.pk}/change/").content.decode()
    groups = re.findall(r"<h2[^>]*>([^<]+)</h2>", html)
    assert groups[1:] == ["Who", "What", "Usage", "Cost", "Timing", "Error"]  # after the title
    assert "The upstream provider &#x27;fake&#x27; answered with HTTP 500." in html
    assert "none reported" in html and "counted by" not in html.lower()
    assert "icon-no" not in html
    ok = UsageRecord.objects.get(cost_usd=Decimal("0.0123456789"))
    html = client.get(f"/admin/gateway/usagerecord/{ok.pk}/change/").content.decode()
    assert "Error</h2>" not in html and "image_count" not in html
    assert "100 prompt · 20 completion · 120 total" in html and "the upstream" in html
    assert "$0.0123" in html and "0.0123456789" in html  # readable, and exact beside it
