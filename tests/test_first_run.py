"""The first run (issue #16): ``make run`` with no provider key still gives a call that succeeds,
on config.toml's ``demo`` model, answered by the demo upstream ``make run`` starts beside the
gateway; the printed curl uses it and says how to switch to a real provider."""

from __future__ import annotations

import re
import shlex
import subprocess
from decimal import Decimal
from io import StringIO
from pathlib import Path

import httpx
import orjson
import pytest
from django.core.management import call_command

from conftest import ROOT, TenantKey, start_gateway_with_config, wait_for_rows
from fake_upstream import DEMO_TEXT, run_fake_upstream
from gateway.models import ApiKey

PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY")


def test_make_run_starts_the_demo_upstream_on_the_port_config_toml_names() -> None:
    makefile = (ROOT / "Makefile").read_text()
    config = (ROOT / "config.toml").read_text()
    assert "tests/fake_upstream.py --port 8001" in makefile
    assert 'base_url = "http://127.0.0.1:8001/v1"' in config


def bootstrap(tmp_path: Path, settings: object, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in PROVIDER_KEYS:
        monkeypatch.delenv(name, raising=False)
    settings.VAR_DIR = tmp_path  # type: ignore[attr-defined]
    settings.TOLLGATE_CONFIG = ROOT / "config.toml"  # type: ignore[attr-defined]
    out = StringIO()
    call_command("bootstrap_demo", "--host", "127.0.0.1:8000", stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_without_any_provider_key_the_printed_curl_calls_the_demo_model(
    tmp_path: Path, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = bootstrap(tmp_path, settings, monkeypatch)
    assert '"model": "demo"' in text
    assert "export OPENAI_API_KEY=" in text and '"gpt-4o-mini"' in text
    assert "openai ($OPENAI_API_KEY)" in text
    raw = re.search(r"Bearer (tg-[\w-]+)", text)
    assert raw is not None and ApiKey.objects.get(prefix=raw.group(1)[:12]).tenant.name == "demo"


@pytest.mark.django_db(transaction=True)
def test_with_a_provider_key_the_printed_curl_calls_its_model(
    tmp_path: Path, settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings.VAR_DIR = tmp_path  # type: ignore[attr-defined]
    settings.TOLLGATE_CONFIG = ROOT / "config.toml"  # type: ignore[attr-defined]
    out = StringIO()
    call_command("bootstrap_demo", stdout=out)
    assert '"model": "gpt-4o-mini"' in out.getvalue()
    assert "demo upstream" not in out.getvalue()


@pytest.mark.e2e
def test_the_printed_curl_succeeds_against_the_shipped_config(
    tenants: dict[str, TenantKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped config.toml, its demo upstream moved to a free port; the curl ``make run``
    prints, run as printed (with that port): 200, the demo text, one priced ledger row."""
    for name in PROVIDER_KEYS:
        monkeypatch.delenv(name, raising=False)
    with run_fake_upstream() as demo_upstream:
        shipped = (ROOT / "config.toml").read_text()
        config = tmp_path / "shipped.toml"
        config.write_text(shipped.replace("http://127.0.0.1:8001/v1", f"{demo_upstream}/v1"))
        server = start_gateway_with_config(tmp_path, config)
        try:
            alice = tenants["alice"]
            curl = (
                f"curl -sS {server.base_url}/v1/chat/completions "
                f'-H "Authorization: Bearer {alice.raw}" -H "Content-Type: application/json" '
                """-d '{"model": "demo", "messages": [{"role": "user", "content": "Say hello"}]}'"""
            )
            answer = orjson.loads(subprocess.run(shlex.split(curl), capture_output=True).stdout)
            assert answer["choices"][0]["message"]["content"] == DEMO_TEXT
            missing = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                headers=alice.headers,
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert missing.status_code == 503
            assert missing.json()["error"]["message"].startswith("OPENAI_API_KEY is not set")
            rows = wait_for_rows(2, tenant=alice.tenant)
        finally:
            server.stop()
    demo = next(row for row in rows if row.requested_model == "demo")
    words = len(DEMO_TEXT.split())
    assert (demo.status_code, demo.prompt_tokens, demo.completion_tokens) == (200, 11, words)
    assert demo.cost_usd == (Decimal(11) * 1 + Decimal(words) * 2) / 1_000_000
