"""Routing with real processes: a failing deployment is retried on a healthy one and then left
alone while it cools down, fallbacks cross dialects, nothing is retried once an answer has
started, and the headers and ledger rows say what served. The fake upstream's model names pick
each deployment's behaviour (``fail-500``, ``drop-mid-stream``...); deployments scripted per
instance (backoff gaps, stalls, shared cooldowns) are in tests/test_e2e_routing_scripted.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None, fake_upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("routing")
    config = Path(tmp / "routing.toml")
    # Provider names of this module's own: with REDIS_URL the routers' health is shared by every
    # gateway, and other modules' gateways fail "fake/fail-500" too.
    config.write_text(f"""
[providers.routing]
type = "openai"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[providers.routing-claude]
type = "anthropic"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."multi"]
deployments = [
  {{ provider = "routing", upstream_model = "fail-500" }},
  {{ provider = "routing", upstream_model = "fake-gpt", priority = 1 }},
]
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."broken"]
provider = "routing"
upstream_model = "fail-500"
fallbacks = ["not-allowed", "claude-fb"]

[models."not-allowed"]
provider = "routing"
upstream_model = "fake-gpt"

[models."claude-fb"]
provider = "routing-claude"
upstream_model = "claude-x"
input_per_mtok = 3.0
output_per_mtok = 15.0

[models."cut"]
provider = "routing"
upstream_model = "drop-mid-stream"
fallbacks = ["claude-fb"]

[models."refused"]
provider = "routing"
upstream_model = "fail-400"
fallbacks = ["claude-fb"]

[router]
max_retries = 2
backoff_base_seconds = 0.01
cooldown_failures = 3
cooldown_seconds = 2
""")
    server = start_gateway_with_config(tmp, config)
    yield server
    server.stop()


@pytest.fixture
def alice(tenants: dict[str, TenantKey]) -> TenantKey:
    """Alice may use every model but ``not-allowed`` (a fallback she must skip)."""
    who = tenants["alice"]
    who.tenant.allowed_models = "multi, broken, claude-fb, cut, refused"
    who.tenant.save()
    return who


def post(server: GatewayServer, who: TenantKey, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=who.headers, timeout=30)


def chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_a_failing_deployment_is_retried_on_a_healthy_one_then_left_to_cool_down(
    gateway: GatewayServer, alice: TenantKey
) -> None:
    answers = [post(gateway, alice, "/v1/chat/completions", chat("multi")) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 5
    attempts = [answer.headers["x-tollgate-attempts"] for answer in answers]
    # Three calls meet the failing deployment first (retried at once on the healthy one); then
    # it cools down (3 failures) and the next calls go straight to the healthy one.
    assert attempts == ["2", "2", "2", "1", "1"]
    for answer in answers:
        assert answer.headers["x-tollgate-model"] == "multi"
        assert answer.headers["x-tollgate-deployment"] == "routing/fake-gpt"
    rows = [wait_for_rows(1, request_id=a.headers["x-request-id"])[0] for a in answers]
    assert [row.attempts for row in rows] == [2, 2, 2, 1, 1]
    assert {(row.served_model, row.upstream_model, row.fallback) for row in rows} == {
        ("multi", "fake-gpt", False)
    }
    assert all(row.status_code == 200 and row.cost_usd > 0 for row in rows)


def test_a_failing_model_falls_back_to_claude_skipping_what_the_caller_may_not_use(
    gateway: GatewayServer, alice: TenantKey
) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=alice.raw, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="broken", messages=[{"role": "user", "content": "hi"}]
    )
    reply = raw.parse()  # the Anthropic answer, in OpenAI's shape
    assert reply.object == "chat.completion" and reply.choices[0].message.content
    assert raw.headers["x-tollgate-model"] == "claude-fb"
    assert raw.headers["x-tollgate-deployment"] == "routing-claude/claude-x"
    assert raw.headers["x-tollgate-attempts"] == "4"  # three on "broken", one on the fallback
    row = wait_for_rows(1, request_id=raw.headers["x-request-id"])[0]
    assert (row.requested_model, row.served_model, row.fallback) == ("broken", "claude-fb", True)
    assert (row.provider, row.upstream_model, row.attempts) == ("routing-claude", "claude-x", 4)
    assert row.cost_usd > 0  # at the fallback's prices: the failed attempts are not billed


def test_an_anthropic_client_falls_back_the_same_way(
    gateway: GatewayServer, alice: TenantKey
) -> None:
    client = anthropic.Anthropic(base_url=gateway.base_url, api_key=alice.raw, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="broken", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().type == "message"
    assert raw.headers["x-tollgate-model"] == "claude-fb"


def test_nothing_is_retried_once_the_answer_has_started(
    gateway: GatewayServer, alice: TenantKey
) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        json=chat("cut", stream=True),
        headers=alice.headers,
        timeout=30,
    ) as response:
        text = response.read().decode()
        request_id, attempts = (
            response.headers["x-request-id"],
            response.headers["x-tollgate-attempts"],
        )
    assert response.status_code == 200 and '"error"' in text and "[DONE]" not in text
    assert attempts == "1"  # the stream had begun: no retry, no fallback
    row = wait_for_rows(1, request_id=request_id)[0]
    assert (row.attempts, row.fallback, row.status_code) == (1, False, 502)


def test_the_callers_errors_are_neither_retried_nor_fallen_back_from(
    gateway: GatewayServer, alice: TenantKey
) -> None:
    answer = post(gateway, alice, "/v1/chat/completions", chat("refused"))
    assert answer.status_code == 400 and answer.headers["x-tollgate-attempts"] == "1"
    row = wait_for_rows(1, request_id=answer.headers["x-request-id"])[0]
    assert (row.attempts, row.fallback, row.served_model) == (1, False, "refused")


def test_a_cooldown_seen_by_one_gateway_process_is_honoured_by_another(
    alice: TenantKey,
    redis_url: str,  # noqa: F811 - the fixture
    fake_upstream: str,
    tmp_path: Path,
) -> None:
    """Two gateways sharing Redis: the first sees the failing deployment fail until it cools
    down; the second then never tries it, though it has seen no failure itself."""
    config = tmp_path / "shared.toml"
    # A provider name of its own: its deployments' health is this test's alone.
    config.write_text(f"""
[providers.shared]
type = "openai"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."multi"]
deployments = [
  {{ provider = "shared", upstream_model = "fail-500" }},
  {{ provider = "shared", upstream_model = "fake-gpt", priority = 1 }},
]

[router]
cooldown_failures = 3
cooldown_seconds = 60
""")
    servers = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            env = {"REDIS_URL": redis_url}
            servers.append(start_gateway_with_config(tmp_path / name, config, env=env))
        one, two = servers
        first = [post(one, alice, "/v1/chat/completions", chat("multi")) for _ in range(3)]
        assert [answer.headers["x-tollgate-attempts"] for answer in first] == ["2", "2", "2"]
        time.sleep(1.5)  # both processes sync every 0.5 s
        second = [post(two, alice, "/v1/chat/completions", chat("multi")) for _ in range(3)]
        assert [answer.status_code for answer in second] == [200] * 3
        assert [answer.headers["x-tollgate-attempts"] for answer in second] == ["1", "1", "1"]
    finally:
        for server in servers:
            server.stop()
