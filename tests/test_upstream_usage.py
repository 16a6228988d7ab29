"""An upstream's usage, however malformed, never costs the caller its answer nor the ledger its
row; and a call whose row cannot be made still leaves one (its error's)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from support.inprocess import api_client

from conftest import TenantKey, ledger_rows
from gateway.calls import pipeline

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def completion(usage: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": "x"}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }


@pytest.mark.parametrize(
    ("usage", "prompt_tokens", "cache_read_tokens"),
    [
        ({"prompt_tokens": "11", "completion_tokens": 2}, None, None),  # a count as text
        ({"prompt_tokens": 1.5, "completion_tokens": [1]}, None, None),
        ({"prompt_tokens": True, "completion_tokens": 2}, None, None),
        ("nonsense", None, None),  # no object at all
        ({"prompt_tokens": 3, "prompt_tokens_details": "x"}, 3, None),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": "2"}}, 3, None),
        ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}, 3, 2),
    ],
)
async def test_a_malformed_usage_is_answered_and_keeps_its_row(
    tenants: dict[str, TenantKey],
    gateway_runtime: Any,
    usage: Any,
    prompt_tokens: int | None,
    cache_read_tokens: int | None,
) -> None:
    current = gateway_runtime(lambda request: httpx.Response(200, json=completion(usage)))
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    async with api_client() as client:
        answer = await client.post("/v1/chat/completions", headers=headers, json=CHAT)
    assert answer.status_code == 200, answer.text  # it was a 500, with no row for the first three
    [row] = await sync_to_async(ledger_rows)(current)
    assert row.status_code == 200
    assert (row.prompt_tokens, row.cache_read_tokens) == (prompt_tokens, cache_read_tokens)


async def test_a_call_whose_row_cannot_be_made_records_its_errors_row(
    tenants: dict[str, TenantKey], gateway_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the row is made (here the cost) is the call's 500, and its row: the call
    counted as recorded before its row existed, and the error's row was dropped as a second."""
    current = gateway_runtime(lambda request: httpx.Response(200, json=completion({})))
    costs = iter([RuntimeError("a cost that cannot be made")])
    real = pipeline.cost_of

    def cost_of(*args: Any) -> Any:
        if (failure := next(costs, None)) is not None:
            raise failure
        return real(*args)

    monkeypatch.setattr(pipeline, "cost_of", cost_of)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    async with api_client() as client:
        answer = await client.post("/v1/chat/completions", headers=headers, json=CHAT)
    assert answer.status_code == 500
    [row] = await sync_to_async(ledger_rows)(current)
    assert (row.status_code, row.error_type) == (500, "internal_error")
