"""Usage reports: the rollup kept by the ledger writer (and rebuilt), the admin report page and its
CSV exports, who may see them, and tenants' own ``GET /v1/usage``."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.forms.models import model_to_dict
from django.test import Client
from support.rows import call

from conftest import TenantKey
from gateway.models import UsageDaily, UsageRecord
from gateway.usage.groups import USAGE_VIEWER_GROUP
from gateway.usage.ledger import LedgerWriter
from gateway.usage.ledger_rows import insert_rows

DAY = date(2026, 3, 14)


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def sample_rows(tenants: dict[str, TenantKey]) -> list[dict[str, Any]]:
    alice, bob, charlie = tenants["alice"], tenants["bob"], tenants["charlie"]
    return [
        call(alice, at(DAY, 9)),
        call(alice, at(DAY, 23, 59), cache_read_tokens=50, reasoning_tokens=7),
        call(alice, at(DAY + timedelta(1), 0, 1)),  # the next UTC day
        call(
            alice,
            at(DAY, 10),
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=0,
            status_code=502,
            error_type="upstream_error",
        ),
        call(
            alice,
            at(DAY, 11),
            model="claude-test",
            provider="fake-anthropic",
            cache_write_tokens=30,
            cost_usd=Decimal("0.0123456789"),
        ),
        call(
            bob,
            at(DAY, 8),
            model="image-test",
            prompt_tokens=None,
            completion_tokens=None,
            image_count=2,
            cost_usd=Decimal("0.08"),
        ),
        call(
            bob,
            at(DAY, 8),
            model="stt-test",
            audio_seconds=Decimal("61.500"),
            cost_usd=Decimal("0.00615"),
        ),
        call(
            charlie,
            at(DAY + timedelta(2), 15),
            model="tts-test",
            input_characters=1234,
            status_code=429,
            error_type="rate_limit_exceeded",
        ),
        call(charlie, at(DAY - timedelta(40), 15)),  # another month
    ]


def rollup_snapshot() -> list[dict[str, Any]]:
    rows = UsageDaily.objects.order_by("day", "tenant_id", "api_key_id", "model", "provider")
    return [{k: v for k, v in model_to_dict(row).items() if k != "id"} for row in rows]


def test_the_writer_keeps_the_rollup_and_a_rebuild_gives_identical_rows(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    rows = sample_rows(tenants)
    insert_rows(rows[:4])  # two batches: the second adds to the rows of the first
    writer = LedgerWriter(tmp_path / "ledger", autostart=False)
    writer._to_spool(rows[4:6])  # spooled rows come back with strings for dates and decimals
    writer.stop()
    assert writer.replay() == 2
    insert_rows(rows[6:])
    written = rollup_snapshot()

    alice_day = UsageDaily.objects.get(day=DAY, tenant=tenants["alice"].tenant, model="gpt-test")
    assert (alice_day.calls, alice_day.errors) == (3, 1)
    assert (alice_day.prompt_tokens, alice_day.cache_read_tokens) == (200, 50)
    assert alice_day.reasoning_tokens == 7 and alice_day.cost_usd == Decimal("0.00028")
    assert UsageDaily.objects.get(day=DAY + timedelta(1)).calls == 1
    stt = UsageDaily.objects.get(model="stt-test")
    assert stt.audio_seconds == Decimal("61.5") and stt.cost_usd == Decimal("0.00615")
    assert UsageDaily.objects.get(model="image-test").image_count == 2
    assert UsageDaily.objects.get(model="tts-test").errors == 1
    assert len(written) == 7

    out = StringIO()
    UsageDaily.objects.all().delete()
    call_command("rebuild_usage_daily", "--start", "2026-01-01", "--end", "2026-12-31", stdout=out)
    assert "7 rollup rows" in out.getvalue()
    assert rollup_snapshot() == written

    # A range rebuild leaves the other days alone and is idempotent.
    call_command("rebuild_usage_daily", "--start", str(DAY), "--end", str(DAY), stdout=out)
    assert rollup_snapshot() == written


def test_rebuild_rejects_a_bad_range(db: None) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="after"):
        call_command("rebuild_usage_daily", "--start", "2026-02-02", "--end", "2026-02-01")
    with pytest.raises(CommandError, match="not a date"):
        call_command("rebuild_usage_daily", "--start", "yesterday", "--end", "2026-02-01")


def test_generate_usage_fills_the_ledger_and_its_rollup(db: None) -> None:
    call_command("generate_usage", "--rows", "500", "--tenants", "5", "--batch", "200",
                 stdout=StringIO())  # fmt: skip
    assert UsageRecord.objects.count() == 500
    assert sum(UsageDaily.objects.values_list("calls", flat=True)) == 500
    assert UsageRecord.objects.values("tenant").distinct().count() > 1


# --- the report page ------------------------------------------------------------------------------


def staff(username: str, *, group: bool = False, superuser: bool = False) -> Client:
    user = User.objects.create_user(username, password="pw-123456", is_staff=True)
    if superuser:
        user.is_superuser = True
        user.save()
    if group:
        user.groups.add(Group.objects.get(name=USAGE_VIEWER_GROUP))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def usage(tenants: dict[str, TenantKey]) -> dict[str, TenantKey]:
    insert_rows(sample_rows(tenants))
    return tenants


MARCH = "start=2026-03-01&end=2026-03-31"


def test_the_report_shows_totals_chart_and_tables_sorted_by_cost(
    usage: dict[str, TenantKey],
) -> None:
    page = staff("root", superuser=True).get(f"/admin/reports/usage/?{MARCH}")
    assert page.status_code == 200
    context = page.context
    assert context["totals"]["calls"] == 8 and context["totals"]["errors"] == 2
    assert context["totals"]["image_count"] == 2
    assert [row["tenant_name"] for row in context["tenants"]] == ["bob", "alice", "charlie"]
    assert context["models"][0]["model"] == "image-test"
    assert len(context["days"]) == 31
    html = page.content.decode()
    assert "<svg" in html and html.count('class="cost-bar"') == 31
    assert "cdn" not in html.lower() and '<script src="http' not in html


def test_the_report_compares_with_the_period_before_and_charts_tokens_by_day(
    usage: dict[str, TenantKey],
) -> None:
    page = staff("root", superuser=True).get(f"/admin/reports/usage/?{MARCH}")
    previous = page.context["previous"]
    assert (previous.start, previous.end) == (date(2026, 1, 29), date(2026, 2, 28))
    assert page.context["previous_totals"]["calls"] == 1  # charlie's call of February 2
    html = page.content.decode()
    assert "+700% vs before" in html  # 8 calls against 1
    assert html.count('class="input-bar"') == 31 == html.count('class="output-bar"')
    assert "2026-03-14: 400 in, 80 out" in html  # four calls of 100 + 20 tokens that day
    by_day = html[html.index('id="by-day"') :].split("</table>")[0]
    assert by_day.count("<tr") == 32  # the header and every day, those without usage too
    fourteenth = by_day[by_day.index("2026-03-14 Sat") :].split("</tr>")[0]
    assert "start=2026-03-14&amp;end=2026-03-14" in by_day
    assert re.findall(r"<td>([^<]*)</td>", fourteenth)[:2] == ["6", "1"]  # calls, errors


def test_model_and_provider_filters_are_lists_of_what_the_rollup_has(
    usage: dict[str, TenantKey],
) -> None:
    client = staff("root", superuser=True)
    form = client.get(f"/admin/reports/usage/?{MARCH}").context["form"]
    assert [value for value, _ in form.fields["model"].choices] == [
        "", "claude-test", "gpt-test", "image-test", "stt-test", "tts-test",
    ]  # fmt: skip
    assert [value for value, _ in form.fields["provider"].choices] == ["", "fake", "fake-anthropic"]
    unknown = client.get(f"/admin/reports/usage/?{MARCH}&model=nope")
    assert unknown.status_code == 400 and "Select a valid choice" in unknown.content.decode()


def test_report_filters_narrow_every_figure(usage: dict[str, TenantKey]) -> None:
    client = staff("root", superuser=True)
    alice = usage["alice"]
    page = client.get(f"/admin/reports/usage/?{MARCH}&tenant={alice.tenant.pk}")
    assert page.context["totals"]["calls"] == 5
    assert [row["tenant_name"] for row in page.context["tenants"]] == ["alice"]
    page = client.get(f"/admin/reports/usage/?{MARCH}&model=gpt-test&provider=fake")
    assert page.context["totals"]["calls"] == 4
    page = client.get(f"/admin/reports/usage/?{MARCH}&key={usage['bob'].key.pk}")
    assert page.context["totals"]["cost_usd"] == Decimal("0.08615")
    assert client.get("/admin/reports/usage/?start=2026-03-05&end=2026-03-01").status_code == 400


def test_the_default_range_is_this_month(usage: dict[str, TenantKey]) -> None:
    insert_rows([call(usage["alice"], datetime.now(UTC))])
    page = staff("root", superuser=True).get("/admin/reports/usage/")
    assert page.context["report"].start == datetime.now(UTC).date().replace(day=1)
    assert page.context["totals"]["calls"] == 1


def test_report_links_open_the_matching_ledger_rows(usage: dict[str, TenantKey]) -> None:
    client = staff("root", superuser=True)
    page = client.get(f"/admin/reports/usage/?{MARCH}")
    alice_row = next(row for row in page.context["tenants"] if row["tenant_name"] == "alice")
    ledger = client.get(alice_row["ledger_url"])
    assert ledger.status_code == 200
    shown = list(ledger.context["cl"].result_list)
    assert len(shown) == 5 and {row.tenant.name for row in shown} == {"alice"}
    model_row = next(row for row in page.context["models"] if row["model"] == "gpt-test")
    shown = list(client.get(model_row["ledger_url"]).context["cl"].result_list)
    assert {(row.requested_model, row.created_at.month) for row in shown} == {("gpt-test", 3)}
    assert len(shown) == 4


def read_csv(response: Any) -> list[dict[str, str]]:
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_the_report_csv_streams_the_filtered_rollup(usage: dict[str, TenantKey]) -> None:
    client = staff("root", superuser=True)
    response = client.get(f"/admin/reports/usage/?{MARCH}&format=csv")
    assert response.streaming
    rows = read_csv(response)
    assert len(rows) == 6
    assert sum(int(row["calls"]) for row in rows) == 8
    assert {row["tenant"] for row in rows} == {"alice", "bob", "charlie"}
    bob = usage["bob"]
    rows = read_csv(client.get(f"/admin/reports/usage/?{MARCH}&tenant={bob.tenant.pk}&format=csv"))
    assert {row["key"] for row in rows} == {bob.key.prefix}
    assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal("0.08615")


def test_the_ledger_csv_streams_the_matching_rows(usage: dict[str, TenantKey]) -> None:
    client = staff("root", superuser=True)
    alice = usage["alice"]
    response = client.get(f"/admin/reports/ledger.csv?{MARCH}&tenant={alice.tenant.pk}")
    assert response.streaming
    rows = read_csv(response)
    assert len(rows) == 5 and {row["tenant_name"] for row in rows} == {"alice"}
    assert [row["status_code"] for row in rows].count("502") == 1
    assert rows == sorted(rows, key=lambda row: row["created_at"])


# --- permissions ----------------------------------------------------------------------------------


def test_staff_without_the_permission_get_403(usage: dict[str, TenantKey]) -> None:
    client = staff("intern")
    assert client.get(f"/admin/reports/usage/?{MARCH}").status_code == 403
    assert client.get(f"/admin/reports/usage/?{MARCH}&format=csv").status_code == 403
    assert client.get(f"/admin/reports/ledger.csv?{MARCH}").status_code == 403
    assert client.get("/admin/gateway/usagerecord/").status_code == 403
    anonymous = Client().get("/admin/reports/usage/")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]


def test_usage_viewers_see_reports_and_the_ledger_but_not_keys_or_tenants(
    usage: dict[str, TenantKey],
) -> None:
    group = Group.objects.get(name=USAGE_VIEWER_GROUP)
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert codenames == {"view_usagerecord", "view_usagedaily", "view_usage_report"}
    client = staff("analyst", group=True)
    assert client.get(f"/admin/reports/usage/?{MARCH}").status_code == 200
    assert client.get(f"/admin/reports/usage/?{MARCH}&format=csv").status_code == 200
    assert client.get(f"/admin/reports/ledger.csv?{MARCH}").status_code == 200
    assert client.get("/admin/gateway/usagerecord/").status_code == 200
    assert client.get("/admin/gateway/usagedaily/").status_code == 200
    for page in ("apikey", "tenant", "providerkey"):
        assert client.get(f"/admin/gateway/{page}/").status_code == 403
    index = client.get("/admin/").content.decode()
    assert "/admin/reports/usage/" in index and "/admin/gateway/apikey/" not in index


def test_the_report_permission_alone_opens_the_report(usage: dict[str, TenantKey]) -> None:
    client = staff("auditor")
    user = User.objects.get(username="auditor")
    user.user_permissions.add(Permission.objects.get(codename="view_usage_report"))
    assert client.get(f"/admin/reports/usage/?{MARCH}").status_code == 200


# --- GET /v1/usage --------------------------------------------------------------------------------


def get_usage(who: TenantKey, query: str) -> tuple[int, Any]:
    response = Client().get(f"/v1/usage?{query}", headers=who.headers)
    return response.status_code, orjson.loads(response.content)


def test_tenants_see_their_own_usage_by_day_model_and_key(usage: dict[str, TenantKey]) -> None:
    status, body = get_usage(usage["alice"], MARCH)
    assert status == 200 and body["object"] == "list" and body["group_by"] == "day"
    assert (body["start"], body["end"]) == ("2026-03-01", "2026-03-31")
    assert [(e["day"], e["calls"], e["errors"]) for e in body["data"]] == [
        ("2026-03-14", 4, 1),
        ("2026-03-15", 1, 0),
    ]
    status, body = get_usage(usage["alice"], f"{MARCH}&group_by=model")
    by_model = {entry["model"]: entry for entry in body["data"]}
    assert set(by_model) == {"gpt-test", "claude-test"}
    assert by_model["claude-test"]["cost_usd"] == pytest.approx(0.0123456789)
    assert by_model["claude-test"]["cache_write_tokens"] == 30
    status, body = get_usage(usage["alice"], f"{MARCH}&group_by=key")
    assert [entry["key"] for entry in body["data"]] == [usage["alice"].key.prefix]
    assert body["data"][0]["calls"] == 5


def test_a_tenant_never_sees_another_tenants_usage(usage: dict[str, TenantKey]) -> None:
    for name, calls in (("alice", 5), ("bob", 2), ("charlie", 1)):
        _, body = get_usage(usage[name], f"{MARCH}&group_by=model")
        assert sum(entry["calls"] for entry in body["data"]) == calls
    _, body = get_usage(usage["charlie"], "start=2026-02-01&end=2026-02-28&group_by=key")
    assert [entry["key"] for entry in body["data"]] == [usage["charlie"].key.prefix]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("start=03/01/2026", "start"),
        ("end=2026-02-30", "end"),
        ("group_by=tenant", "group_by"),
        ("start=2026-03-02&end=2026-03-01", "start"),
        ("start=2024-01-01&end=2026-01-01", "end"),
    ],
)
def test_bad_usage_parameters_are_a_400_in_openai_shape(
    usage: dict[str, TenantKey], query: str, param: str
) -> None:
    status, body = get_usage(usage["alice"], query)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param


def test_usage_needs_a_key(usage: dict[str, TenantKey]) -> None:
    response = Client().get("/v1/usage")
    assert response.status_code == 401
    assert orjson.loads(response.content)["error"]["code"] == "invalid_api_key"


def test_the_ledger_list_takes_the_planners_estimate_for_large_results(
    usage: dict[str, TenantKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connection

    from gateway.usage import admin as usage_admin

    monkeypatch.setattr(usage_admin, "EXACT_COUNT_BELOW", 0)  # every result counts as large
    paginator = usage_admin.EstimatedCountPaginator(UsageRecord.objects.all(), 100)
    if connection.vendor == "postgresql":
        assert isinstance(paginator.count, int)  # the planner's guess, whatever it is
    else:
        assert paginator.count == 9  # SQLite counts exactly
    page = staff("root", superuser=True).get("/admin/gateway/usagerecord/")
    assert page.status_code == 200 and page.context["cl"].result_count >= 0
