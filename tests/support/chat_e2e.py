"""What the end-to-end chat suites share: the official ``openai`` SDK on the gateway under
uvicorn (``gateway_server``, routed to the fake upstream, tests/fake_upstream.py, whose model name
picks its behaviour), and the exact usage of ``gpt-test`` in the ledger.

Assertions are what a user or an accountant would notice: HTTP status, the ``{"error": {...}}``
body, the stream as the SDK yields it, and the ledger row (``UsageRecord``) with its exact tokens
and cost. No test sleeps to wait for the ledger: see ``support.e2e.settle``.

A test module imports ``sdk_fixture`` for pytest to find the ``sdk`` fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from conftest import GatewayServer, TenantKey
from gateway.models import UsageRecord
from support.e2e import CACHED, COMPLETION, GPT_TEST_COST, PROMPT, REASONING


@pytest.fixture(name="sdk")
def sdk_fixture(gateway_server: GatewayServer) -> Iterator[Callable[..., openai.OpenAI]]:
    """``sdk(tenant_key_or_raw_key, **options)``: an SDK client (no retries unless asked)."""
    clients: list[openai.OpenAI] = []

    def make(who: TenantKey | str, **options: Any) -> openai.OpenAI:
        raw = who.raw if isinstance(who, TenantKey) else who
        options = {"max_retries": 0, "timeout": 15.0, **options}
        client = openai.OpenAI(base_url=gateway_server.base_url + "/v1", api_key=raw, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def assert_exact_usage(row: UsageRecord) -> None:
    assert row.prompt_tokens == PROMPT
    assert row.completion_tokens == COMPLETION
    assert row.total_tokens == PROMPT + COMPLETION
    assert row.cache_read_tokens == CACHED
    assert row.cache_write_tokens is None
    assert row.reasoning_tokens == REASONING
    assert row.usage_estimated is False
    assert row.cost_usd == GPT_TEST_COST
