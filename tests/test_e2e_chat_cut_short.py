"""End to end: chat calls cut short, by the upstream mid-stream or by the client, and their bill."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal

import httpx
import openai
import pytest
from support.chat_e2e import sdk_fixture  # noqa: F401 - a fixture: sdk
from support.e2e import ERROR_KEYS, HELLO, chat_url, rows_of, settle, sse_events, validate

from conftest import GatewayServer, TenantKey, wait_for_rows

pytestmark = pytest.mark.e2e

# --- the upstream breaks off a stream ------------------------------------------------------------


def test_upstream_drop_mid_stream_is_an_in_band_error_and_billed_as_estimated(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    alice = tenants["alice"]
    raw = sdk(alice).chat.completions.with_raw_response.create(
        model="drop-mid-stream", messages=HELLO, stream=True
    )
    assert raw.http_response.status_code == 200  # the stream had started: the error is in-band
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            validate("CreateChatCompletionStreamResponse", chunk.to_dict())
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1 "
    assert type(caught.value) is openai.APIError, "an error event, not a broken connection"
    assert isinstance(caught.value.body, dict)
    validate("Error", caught.value.body)
    assert caught.value.body["code"] == "upstream_unavailable"

    response = httpx.post(
        chat_url(gateway_server),
        headers=alice.headers,
        timeout=10,
        json={"model": "drop-mid-stream", "messages": HELLO, "stream": True},
    )
    events = sse_events(response.text)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    validate("ErrorResponse", last)
    assert set(last["error"]) == ERROR_KEYS
    assert last["error"]["code"] == "upstream_unavailable"
    contents = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[:-1]]
    assert "".join(c or "" for c in contents) == "tok0 tok1 "

    rows = wait_for_rows(2, tenant=alice.tenant)
    assert [row.request_id for row in rows] == [
        raw.headers["x-request-id"],
        response.headers["x-request-id"],
    ]
    for row in rows:
        assert (row.status_code, row.error_type) == (502, "upstream_unavailable")
        assert row.stream is True
        assert row.usage_estimated is True
        assert row.completion_tokens == 2
        assert row.prompt_tokens is not None and row.prompt_tokens >= 1
        # drop-mid-stream is priced at 1.0 in / 2.0 out per Mtok: the estimate is billed
        assert row.cost_usd == Decimal(row.prompt_tokens + 2 * 2) / Decimal(1_000_000)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 2


# --- the client walks away -----------------------------------------------------------------------


def test_client_disconnect_mid_stream_is_billed_at_once_as_499(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    body = {"model": "slow-stream", "messages": HELLO, "stream": True}
    contents = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", chat_url(gateway_server), headers=alice.headers, json=body
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"tok' in line:
                contents += 1
                if contents == 3:
                    break
    closed_at = time.monotonic()  # leaving the blocks closed the half-read response's connection

    rows = wait_for_rows(1, timeout=9.0, request_id=request_id)
    waited = time.monotonic() - closed_at
    assert rows, "no ledger row for the abandoned stream"
    assert waited < 5.0, f"the row took {waited:.1f} s: the gateway streamed on to the end"
    row = rows[0]
    assert (row.status_code, row.error_type) == (499, "client_disconnected")
    assert row.usage_estimated is True
    assert row.stream is True
    assert row.completion_tokens is not None and 1 <= row.completion_tokens <= 99
    assert row.completion_tokens >= contents, "every chunk the client got was metered"
    assert row.prompt_tokens is not None and row.prompt_tokens >= 1
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_client_timeout_before_the_answer_is_billed_as_499(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    # "slow" answers after 3 s; the gateway would give up at 1 s (504); the client leaves first.
    with pytest.raises(openai.APITimeoutError):
        sdk(alice, timeout=0.3).chat.completions.create(model="slow", messages=HELLO, stream=stream)

    rows = wait_for_rows(1, tenant=alice.tenant)
    assert len(rows) == 1
    row = rows[0]
    assert (row.status_code, row.error_type) == (499, "client_disconnected")
    assert row.usage_estimated is True and row.completion_tokens == 0
    assert row.stream is stream
    settle(gateway_server, tenants["bob"])
    assert len(rows_of(alice)) == 1
