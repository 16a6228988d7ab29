"""What the end-to-end suites of the Anthropic side share: the gateway under uvicorn with two
providers on the same fake upstream (tests/fake_upstream.py), ``fake`` (OpenAI's wire format) and
``claude`` (Anthropic's); the ``anthropic`` SDK on it; what the fake reports and what it costs;
helpers to read Anthropic streams and the ledger.

Three ways in are covered:

- OpenAI clients calling a model routed to Anthropic (``/v1/chat/completions``, translated both
  ways by ``providers.anthropic``): test_e2e_chat_to_claude;
- Anthropic clients calling a model routed to Anthropic (``/v1/messages``, passed through):
  test_e2e_messages_native;
- Anthropic clients calling a model routed to an OpenAI upstream (``/v1/messages``, translated by
  ``providers.anthropic.endpoint`` and ``providers.anthropic.stream``):
  test_e2e_messages_translated, and Claude Code's own requests in
  test_e2e_claude_code_translated;

with the errors of ``/v1/messages`` in test_e2e_messages_errors and its tenants in
test_e2e_tenant_isolation.

Assertions are what a user or an accountant would notice: the answer as the SDK gives it, the
error as the SDK raises it, what the upstream received (its ``echo`` model), and the ledger row
with its exact tokens (cache reads and writes included) and cost. As in the chat suites, no test
sleeps: ``settle`` waits for one more row, so every row queued before it is in the database.

The fixtures are ``server`` (module-scoped: one gateway per test module) and ``claude``; a test
module imports ``server_fixture`` and ``claude_fixture`` for pytest to find them by those names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows
from gateway.models import UsageRecord
from support.e2e import GPT_TEST_COST

UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream"
UPSTREAM_OPENAI_KEY = "sk-upstream-secret"  # start_gateway's FAKE_UPSTREAM_KEY
MAX_BODY = 256 * 1024  # TOLLGATE_MAX_BODY_BYTES of the gateway ``server`` starts

# --- the gateway under test ----------------------------------------------------------------------

CLAUDE_MODELS = {
    "claude-test": "claude-fake",
    "claude-tool": "tool-use",
    "claude-stream-error": "stream-error",
    "claude-overloaded": "overloaded",
    "claude-echo": "echo",
    "claude-fail-500": "fail-500",
    "claude-drop": "drop-mid-stream",
    "claude-fail-429": "fail-429",
    "claude-slow-stream": "slow-stream",
}
GPT_MODELS = {  # routed to the OpenAI-shaped provider; gpt-test priced as GPT_TEST_COST says
    "gpt-echo": "echo",
    "gpt-reasoning": "reasoning",
    "gpt-drop": "drop-mid-stream",
    "gpt-fail-500": "fail-500",
    "gpt-fail-429": "fail-429",
    "gpt-slow-stream": "slow-stream",
}


def write_anthropic_config(path: Path, upstream: str) -> Path:
    """Both providers on the fake upstream: ``fake`` (OpenAI) and ``claude`` (Anthropic)."""
    text = f"""
[providers.fake]
type = "openai"
base_url = "{upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 5.0

[providers.claude]
type = "anthropic"
base_url = "{upstream}/v1"
api_key_env = "FAKE_ANTHROPIC_KEY"
timeout_seconds = 5.0

[models."gpt-test"]
provider = "fake"
upstream_model = "fake-gpt"
input_per_mtok = 1.0
output_per_mtok = 2.0
cache_read_per_mtok = 0.5
"""
    for alias, upstream_model in GPT_MODELS.items():
        text += f"""
[models."{alias}"]
provider = "fake"
upstream_model = "{upstream_model}"
input_per_mtok = 1.0
output_per_mtok = 2.0
"""
    text += """
[models."gpt-echo-thinker"]
provider = "fake"
upstream_model = "echo"
reasoning = true
"""
    for alias, upstream_model in CLAUDE_MODELS.items():
        text += f"""
[models."{alias}"]
provider = "claude"
upstream_model = "{upstream_model}"
input_per_mtok = 3.0
output_per_mtok = 15.0
cache_read_per_mtok = 0.3
cache_write_per_mtok = 3.75
"""
    path.write_text(text)
    return path


@pytest.fixture(scope="module", name="server")
def server_fixture(
    django_db_setup: None,
    django_db_blocker: object,
    fake_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("gateway-anthropic")
    config = write_anthropic_config(tmp / "anthropic.toml", fake_upstream)
    gateway = start_gateway_with_config(
        tmp,
        config,
        env={
            "FAKE_ANTHROPIC_KEY": UPSTREAM_ANTHROPIC_KEY,
            "TOLLGATE_MAX_BODY_BYTES": str(MAX_BODY),
        },
    )
    yield gateway
    if gateway.process.poll() is None:
        gateway.stop()


# --- what the fake upstream reports, and what it costs --------------------------------------------

# Anthropic usage: input 11 (uncached), cache writes 4, cache reads 3, output 5 (streams: 1 at
# message_start, 5 at message_delta). The ledger's prompt is all input: 11 + 4 + 3.
AN_INPUT, AN_CACHE_WRITE, AN_CACHE_READ, AN_OUTPUT = 11, 4, 3, 5
AN_PROMPT = AN_INPUT + AN_CACHE_WRITE + AN_CACHE_READ


def claude_cost(completion: int) -> Decimal:
    """claude-*: 3 in, 0.3 cache read, 3.75 cache write, 15 out (USD/Mtok), full prompt."""
    micro = (
        AN_INPUT * Decimal(3)
        + AN_CACHE_READ * Decimal("0.3")
        + AN_CACHE_WRITE * Decimal("3.75")
        + completion * Decimal(15)
    )
    return micro / Decimal(1_000_000)


CLAUDE_COST = claude_cost(AN_OUTPUT)
assert Decimal("0.0001239") == CLAUDE_COST  # (33 + 0.9 + 15 + 75) / 1e6

# OpenAI usage of the fake: prompt 11 of which 3 cached, completion 5 (reasoning 2).
OA_PROMPT, OA_CACHED, OA_COMPLETION = 11, 3, 5
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "input_schema": WEATHER_SCHEMA,
}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


# --- SDK clients and helpers ---------------------------------------------------------------------


def raw_key(who: TenantKey | str) -> str:
    return who.raw if isinstance(who, TenantKey) else who


@pytest.fixture(name="claude")
def claude_fixture(
    server: GatewayServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., anthropic.Anthropic]]:
    """``claude(tenant_or_key)``: an anthropic SDK client on the gateway, no retries.

    ``auth`` is how the key is given: ``"api_key"`` (this SDK, 2.x, sends it as a Bearer token;
    older ones as ``x-api-key``), ``"token"`` (``auth_token``: Bearer) or ``"header"`` (an
    ``x-api-key`` default header, no credential)."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    clients: list[anthropic.Anthropic] = []

    def make(who: TenantKey | str, *, auth: str = "api_key", **options: Any) -> anthropic.Anthropic:
        options = {"max_retries": 0, "timeout": 15.0, **options}
        if auth == "header":
            headers = {**options.pop("default_headers", {}), "x-api-key": raw_key(who)}
            credential: dict[str, Any] = {"default_headers": headers}
        else:
            credential = {"auth_token" if auth == "token" else "api_key": raw_key(who)}
        client = anthropic.Anthropic(base_url=server.base_url, **credential, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def messages_url(server: GatewayServer) -> str:
    return server.base_url + "/v1/messages"


def x_api_key(who: TenantKey | str) -> dict[str, str]:
    return {"x-api-key": raw_key(who), "anthropic-version": "2023-06-01"}


def one_row(request_id: str) -> UsageRecord:
    rows = wait_for_rows(1, request_id=request_id)
    assert len(rows) == 1, f"no ledger row for {request_id}"
    return rows[0]


def assert_claude_usage(row: UsageRecord, *, completion: int = AN_OUTPUT) -> None:
    """The exact Anthropic usage of the fake, in the ledger."""
    assert row.prompt_tokens == AN_PROMPT
    assert row.completion_tokens == completion
    assert row.total_tokens == AN_PROMPT + completion
    assert row.cache_read_tokens == AN_CACHE_READ
    assert row.cache_write_tokens == AN_CACHE_WRITE
    assert row.cost_usd == claude_cost(completion)


def assert_gpt_usage(row: UsageRecord) -> None:
    """The exact OpenAI usage of the fake (gpt-test's prices), in the ledger."""
    assert row.prompt_tokens == OA_PROMPT
    assert row.completion_tokens == OA_COMPLETION
    assert row.total_tokens == OA_PROMPT + OA_COMPLETION
    assert row.cache_read_tokens == OA_CACHED
    assert row.usage_estimated is False
    assert row.cost_usd == GPT_TEST_COST


def assert_row(
    row: UsageRecord,
    who: TenantKey,
    *,
    endpoint: str,
    model: str,
    provider: str,
    upstream_model: str,
    stream: bool,
    status: int = 200,
    error: str = "",
) -> None:
    assert (row.tenant_id, row.api_key_id) == (who.tenant.pk, who.key.pk)
    assert row.endpoint == endpoint
    assert (row.requested_model, row.provider, row.upstream_model) == (
        model,
        provider,
        upstream_model,
    )
    assert row.stream is stream
    assert (row.status_code, row.error_type) == (status, error)


def anthropic_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` per SSE event of an Anthropic stream; each names its type twice."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert len(lines) == 2, block
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name, block
        events.append((name, data))
    return events


def echoed(text: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """What the fake's ``echo`` model received: (request JSON, lower-cased headers)."""
    assert text is not None
    data = json.loads(text)
    return data["body"], data["headers"]
