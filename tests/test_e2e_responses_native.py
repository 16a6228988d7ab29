"""``/v1/responses`` to an upstream that serves the Responses API itself (``responses = true``):
the request goes as it is, the answer comes back as it was, its usage is billed, and the
upstream keeps the state: ``GET`` and ``DELETE`` of a stored id go there, for its tenant only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.responses_standin import ResponsesStandIn, responses_standin

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows
from gateway.models import StoredResponse

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upstream() -> Iterator[ResponsesStandIn]:
    with responses_standin() as standin:
        yield standin


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None, upstream: ResponsesStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("native")
    config = Path(tmp / "native.toml")
    config.write_text(f"""
[providers.native]
type = "openai"
base_url = "{upstream.base_url}/v1"
responses = true

[models."native-model"]
provider = "native"
upstream_model = "gpt-native"
input_per_mtok = 1.0
output_per_mtok = 2.0
cache_read_per_mtok = 0.5
""")
    server = start_gateway_with_config(tmp, config)
    yield server
    server.stop()


def post(server: GatewayServer, who: TenantKey, **body: object) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/responses",
        json={"model": "native-model", "input": "hi", **body},
        headers=who.headers,
        timeout=30,
    )


def test_the_request_goes_as_it_is_and_the_answer_comes_back_as_it_was(
    gateway: GatewayServer, upstream: ResponsesStandIn, tenants: dict[str, TenantKey]
) -> None:
    answer = post(gateway, tenants["alice"], stream=False, tools=[{"type": "web_search"}])
    assert answer.status_code == 200
    sent = upstream.requests[-1].body
    assert sent["model"] == "gpt-native" and sent["tools"] == [{"type": "web_search"}]
    assert "x-tollgate-dropped-tools" not in answer.headers  # the upstream runs its own tools
    assert answer.json()["id"].startswith("resp_standin_")
    row = wait_for_rows(1, request_id=answer.headers["x-request-id"])[0]
    assert (row.endpoint, row.provider, row.upstream_model) == ("responses", "native", "gpt-native")
    assert (row.prompt_tokens, row.completion_tokens, row.cache_read_tokens) == (11, 5, 3)
    assert row.cost_usd > 0


def test_a_native_stream_is_passed_through_and_its_usage_billed(
    gateway: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/responses",
        json={"model": "native-model", "input": "hi", "stream": True},
        headers=tenants["alice"].headers,
        timeout=30,
    ) as answer:
        text = answer.read().decode()
        request_id = answer.headers["x-request-id"]
    kinds = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert kinds == ["response.output_item.done", "response.completed"]
    completed = json.loads(text.split("data: ")[-1])
    assert completed["response"]["usage"]["input_tokens"] == 11
    row = wait_for_rows(1, request_id=request_id)[0]
    assert (row.stream, row.status_code, row.prompt_tokens, row.completion_tokens) == (
        True,
        200,
        11,
        5,
    )


def test_the_upstream_keeps_the_state_for_its_tenant(
    gateway: GatewayServer, upstream: ResponsesStandIn, tenants: dict[str, TenantKey]
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    response_id = post(gateway, alice, stream=False).json()["id"]
    assert StoredResponse.objects.get(id=response_id).native
    url = f"{gateway.base_url}/v1/responses/{response_id}"
    fetched = httpx.get(url, headers=alice.headers, timeout=10)
    assert fetched.status_code == 200 and fetched.json()["id"] == response_id
    assert upstream.requests[-1].method == "GET"
    assert httpx.get(url, headers=bob.headers, timeout=10).status_code == 404
    deleted = httpx.delete(url, headers=alice.headers, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert response_id not in upstream.stored
    assert httpx.get(url, headers=alice.headers, timeout=10).status_code == 404


def test_store_false_leaves_no_trace(gateway: GatewayServer, tenants: dict[str, TenantKey]) -> None:
    response_id = post(gateway, tenants["alice"], stream=False, store=False).json()["id"]
    assert not StoredResponse.objects.filter(id=response_id).exists()
