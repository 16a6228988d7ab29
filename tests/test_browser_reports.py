"""The admin in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright,
against the gateway served by uvicorn, at 1366x768.

An administrator's walk: a tenant with its spend, a key created and copied, then revoked (and
refused by the API at once), the ledger list, a failed call's record, the usage report. A usage
viewer filters the report and downloads the CSV. Every page is kept as a screenshot in
``test-artifacts/`` (the screen, and the whole page as ``*-full.png``), and no page may scroll
sideways at that width: neither the document nor any box in it (a table's scroll box included).

Locally the test is skipped when Chromium or Playwright is missing (``make test`` installs
Chromium); with ``CI=true`` their absence fails it. Django's database calls happen before the
browser starts: the Playwright sync API runs an event loop in this thread, where Django refuses
them; during the walk the API is checked over HTTP.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from support.rows import call

from conftest import ROOT, GatewayServer, TenantKey, start_gateway, wait_for_rows
from gateway.models import Tenant
from gateway.usage.groups import USAGE_VIEWER_GROUP
from gateway.usage.ledger import insert_rows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"
SCREEN = {"width": 1366, "height": 768}

SIDEWAYS = """() => {
  const found = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) found.push(`the page: ${root.scrollWidth}px`);
  for (const box of document.querySelectorAll("body *")) {
    const overflow = getComputedStyle(box).overflowX;
    if ((overflow === "auto" || overflow === "scroll") && box.scrollWidth > box.clientWidth + 1)
      found.push(`${box.tagName.toLowerCase()}#${box.id}.${box.className}: ${box.scrollWidth}px`);
  }
  return found;
}"""
"""What scrolls sideways: the document, or a box of it (the admin's tables scroll in theirs)."""

pytestmark = pytest.mark.e2e


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


@pytest.fixture
def admin_server(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> Iterator[GatewayServer]:
    server = start_gateway(tmp_path, fake_upstream)
    yield server
    server.stop()


@pytest.fixture
def browser_page(admin_server: GatewayServer) -> Iterator[Any]:
    if reason := _missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True, viewport=SCREEN)
        context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=admin_server.base_url
        )
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def look(page: Any, name: str) -> None:
    """Keep the page as ``name``.png (the screen) and ``name``-full.png; nothing scrolls
    sideways."""
    page.wait_for_load_state()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.screenshot(path=str(ARTIFACTS / f"{name}-full.png"), full_page=True)
    assert page.evaluate(SIDEWAYS) == [], f"{name} scrolls sideways at 1366 px"


def log_in(page: Any, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")


# --- an administrator's walk ----------------------------------------------------------------------


@pytest.fixture
def walk_data(tenants: dict[str, TenantKey], admin_server: GatewayServer) -> None:
    """Before the browser starts: alice's budget and spend this month, a call that failed
    upstream (made through the gateway, so its row is the pipeline's)."""
    alice = tenants["alice"]
    Tenant.objects.filter(pk=alice.tenant.pk).update(budget_usd=Decimal("2.00"))
    now = datetime.now(UTC)
    insert_rows(
        [
            call(alice, now.replace(day=1, hour=h), cost_usd=Decimal("0.25"), prompt_tokens=1200)
            for h in range(2)
        ]
    )
    failed = httpx.post(
        f"{admin_server.base_url}/v1/chat/completions",
        headers=alice.headers,
        json={"model": "fail-500", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert failed.status_code == 502
    assert wait_for_rows(1, status_code=502)


@pytest.fixture
def first_run(
    walk_data: None, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """What ``make run`` prints: ``bootstrap_demo``'s admin login and demo key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings.VAR_DIR = tmp_path
    settings.TOLLGATE_CONFIG = ROOT / "config.toml"
    out = io.StringIO()
    call_command("bootstrap_demo", stdout=out)
    printed = out.getvalue()
    password = re.search(r"user: admin\s+password: (\S+)", printed)
    key = re.search(r"Bearer (tg-[\w-]+)", printed)
    assert password and key, printed
    return {"password": password.group(1), "key": key.group(1)}


def test_an_administrator_walks_tenants_keys_the_ledger_and_the_report(
    tenants: dict[str, TenantKey],
    admin_server: GatewayServer,
    first_run: dict[str, str],
    browser_page: Any,
) -> None:
    page, base = browser_page, admin_server.base_url
    alice = tenants["alice"]
    # The first run: the gateway's root leads to the admin's login, where the login make run
    # printed opens the admin; the demo key it printed works.
    page.goto(f"{base}/")
    assert page.url == f"{base}/admin/login/?next=/admin/"
    look(page, "first-run-login")
    page.fill("#id_username", "admin")
    page.fill("#id_password", first_run["password"])
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")
    look(page, "first-run-admin")
    demo = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {first_run['key']}"})
    assert demo.status_code == 200, "the printed demo key works"

    # The tenants: alice's spend this month against her budget, her keys, her last call.
    page.click("text=Tenants")
    alice_row = page.locator("#result_list tbody tr", has_text="alice")
    assert "$0.50" in alice_row.inner_text() and "$2.00 monthly" in alice_row.inner_text()
    assert alice_row.locator(".budget-use").inner_text().strip() == "25%"
    assert alice_row.locator(".field-active_keys_display").inner_text() == "1"
    look(page, "tenants")

    # Her page: name, limits, keys, then this month's usage.
    alice_row.locator("a", has_text="alice").click()
    assert page.inner_text("#month-calls") == "3" and page.inner_text("#month-cost") == "$0.50"
    look(page, "tenant")

    # A new key: shown once, in a box; the copy button puts it on the clipboard.
    page.click("#issue-key")
    page.fill("#id_name", "browser")
    page.click("input[name=_save]")
    raw = page.input_value("#new-key")
    assert raw.startswith("tg-")
    page.click("#copy-key")
    page.wait_for_selector("#copy-result:has-text('Copied.')")
    assert page.evaluate("navigator.clipboard.readText()") == raw
    look(page, "new-key")
    models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {raw}"})
    assert models.status_code == 200, "the key shown is the key issued"

    # Revoke it from its page, after a confirmation: the API refuses it at once.
    page.click("#key-page")
    page.click("#revoke-key")
    look(page, "revoke")
    page.click("#confirm-revoke")
    page.wait_for_selector(".messagelist .success")
    assert "revoked" in page.inner_text(".field-state")
    assert page.locator("#revoke-key").count() == 0
    look(page, "key-revoked")
    models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {raw}"})
    assert models.status_code == 401

    # The ledger: alice's rows this month with their totals, the failed call among them.
    page.goto(f"{base}/admin/gateway/tenant/{alice.tenant.pk}/change/")
    page.click("#month-ledger-link")
    assert page.inner_text("#totals-calls") == "3" and page.inner_text("#totals-errors") == "1"
    assert page.inner_text("#totals-cost") == "$0.50"
    assert page.locator("#result_list .status-5xx").count() == 1
    look(page, "ledger")

    # The failed call's record: grouped, with the upstream's message.
    page.locator("#result_list tbody tr", has_text="502").locator("th a").click()
    page.wait_for_url("**/usagerecord/*/change/**")
    headings = page.locator("fieldset h2").all_inner_texts()
    assert headings == ["Who", "What", "Usage", "Cost", "Timing", "Error"]
    assert "answered with HTTP 500" in page.inner_text(".error-message")
    look(page, "record")

    # The report: model from a list, tokens beside cost and calls, by day, against before.
    page.goto(f"{base}/admin/gateway/tenant/{alice.tenant.pk}/change/")
    page.click("#month-report-link")
    page.select_option("#id_model", "gpt-test")
    page.click("#apply-filters")
    page.wait_for_url("**model=gpt-test**")
    assert page.inner_text("#total-calls") == "2"
    assert page.locator("svg.tokens-chart rect.input-bar").count() >= 28
    assert page.locator("#by-day tbody tr").count() >= 28
    assert "none before" in page.inner_text("#report-totals")
    look(page, "report")

    # The admin's other pages fit the screen too.
    for name, path in (
        ("index", "/admin/"),
        ("provider-keys", "/admin/gateway/providerkey/"),
        ("upstream-health", "/admin/routing/health/"),
        ("daily-usage", "/admin/gateway/usagedaily/"),
        ("keys", "/admin/gateway/apikey/"),
        ("dead-letters", "/admin/gateway/ledgerdeadletter/"),
    ):
        page.goto(base + path)
        look(page, name)


# --- a usage viewer -------------------------------------------------------------------------------


@pytest.fixture
def report_data(tenants: dict[str, TenantKey]) -> None:
    """Rows of this month and a usage viewer, made before the browser starts."""
    now = datetime.now(UTC)
    alice, bob = tenants["alice"], tenants["bob"]
    insert_rows(
        [call(alice, now.replace(day=1, hour=h), model="gpt-test") for h in range(3)]
        + [call(bob, now.replace(day=1, hour=5), model="image-test", image_count=1)]
    )
    viewer = User.objects.create_user("analyst", password="pw-analyst-1", is_staff=True)
    viewer.groups.add(Group.objects.get(name=USAGE_VIEWER_GROUP))


def test_a_usage_viewer_filters_the_report_and_downloads_the_csv(
    tenants: dict[str, TenantKey],
    admin_server: GatewayServer,
    report_data: None,
    browser_page: Any,
    tmp_path: Path,
) -> None:
    alice = tenants["alice"]
    page, base = browser_page, admin_server.base_url
    log_in(page, base, "analyst", "pw-analyst-1")
    page.click("text=Usage report")
    page.wait_for_selector("#report-totals")
    assert page.inner_text("#total-calls") == "4"
    assert page.locator("svg.usage-chart rect.cost-bar").count() >= 28

    page.select_option("#id_tenant", label="alice")
    page.click("#apply-filters")
    page.wait_for_url(f"**tenant={alice.tenant.pk}**")
    assert page.inner_text("#total-calls") == "3"
    assert page.locator("#by-tenant tbody tr").count() == 1
    look(page, "usage-report")

    with page.expect_download() as download_info:
        page.click("#csv-link")
    download = download_info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {row["tenant"] for row in rows} == {"alice"}
    assert sum(int(row["calls"]) for row in rows) == 3
    shutil.copy(target, ARTIFACTS / "usage-report.csv")
