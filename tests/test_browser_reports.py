"""The usage report in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright logs in to the admin served by the gateway under uvicorn, filters the report, downloads
the CSV, and leaves a screenshot in ``test-artifacts/``.

Locally the test is skipped when Chromium or Playwright is missing (``make test`` installs
Chromium); with ``CI=true`` their absence fails it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from support.rows import call

from conftest import ROOT, GatewayServer, TenantKey, start_gateway
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
def browser_page() -> Iterator[Any]:
    if reason := _missing():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}, and CI=true")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


@pytest.fixture
def admin_server(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> Iterator[GatewayServer]:
    server = start_gateway(tmp_path, fake_upstream)
    yield server
    server.stop()


@pytest.fixture
def report_data(tenants: dict[str, TenantKey]) -> None:
    """Rows of this month and a usage viewer, made before the browser starts: the Playwright
    sync API runs an event loop in this thread, where Django refuses database calls."""
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
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "analyst")
    page.fill("#id_password", "pw-analyst-1")
    page.click("input[type=submit]")
    page.click("text=Usage report")
    page.wait_for_selector("#report-totals")
    assert page.inner_text("#total-calls") == "4"
    assert page.locator("svg.usage-chart rect.cost-bar").count() >= 28

    page.select_option("#id_tenant", label="alice")
    page.click("#apply-filters")
    page.wait_for_url(f"**tenant={alice.tenant.pk}**")
    assert page.inner_text("#total-calls") == "3"
    assert page.locator("#by-tenant tbody tr").count() == 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "usage-report.png"), full_page=True)

    with page.expect_download() as download_info:
        page.click("#csv-link")
    download = download_info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {row["tenant"] for row in rows} == {"alice"}
    assert sum(int(row["calls"]) for row in rows) == 3
    shutil.copy(target, ARTIFACTS / "usage-report.csv")
