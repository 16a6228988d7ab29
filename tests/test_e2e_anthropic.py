"""End to end: the Anthropic side of the gateway, through the official ``openai`` and ``anthropic``
SDKs, against the gateway under uvicorn.

The gateway here has two providers on the same fake upstream (tests/fake_upstream.py): ``fake``
(OpenAI's wire format) and ``claude`` (Anthropic's). Three ways in are covered:

- OpenAI clients calling a model routed to Anthropic (``/v1/chat/completions``, translated both
  ways by ``providers.anthropic``);
- Anthropic clients calling a model routed to Anthropic (``/v1/messages``, passed through);
- Anthropic clients calling a model routed to an OpenAI upstream (``/v1/messages``, translated by
  ``providers.anthropic.endpoint`` and ``providers.anthropic.stream``).

Assertions are what a user or an accountant would notice: the answer as the SDK gives it, the
error as the SDK raises it, what the upstream received (its ``echo`` model), and the ledger row
with its exact tokens (cache reads and writes included) and cost. As in test_e2e_chat, no test
sleeps: ``settle`` waits for one more row, so every row queued before it is in the database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types.shared import ErrorResponse as AnthropicErrorResponse
from support.e2e import (
    GPT_TEST_COST,
    HELLO,
    STREAM_TEXT,
    TOOLS,
    check_error,
    rows_of,
    settle,
    sse_events,
    validate,
)

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

UPSTREAM_ANTHROPIC_KEY = "sk-ant-upstream"
UPSTREAM_OPENAI_KEY = "sk-upstream-secret"  # start_gateway's FAKE_UPSTREAM_KEY
BETA = {"anthropic-beta": "tools-2099-01-01"}
PINNED_VERSION = "2023-06-01"  # the claude provider's anthropic_version (the default)
MAX_BODY = 256 * 1024  # TOLLGATE_MAX_BODY_BYTES of this module's gateway

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
GPT_MODELS = {  # routed to the OpenAI-shaped provider; gpt-test is priced like test_e2e_chat's
    "gpt-echo": "echo",
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


@pytest.fixture(scope="module")
def server(
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


# --- helpers -------------------------------------------------------------------------------------


def raw_key(who: TenantKey | str) -> str:
    return who.raw if isinstance(who, TenantKey) else who


@pytest.fixture
def oai(server: GatewayServer) -> Iterator[Callable[..., openai.OpenAI]]:
    """``oai(tenant_or_key)``: an openai SDK client on this module's gateway, no retries."""
    clients: list[openai.OpenAI] = []

    def make(who: TenantKey | str, **options: Any) -> openai.OpenAI:
        options = {"max_retries": 0, "timeout": 15.0, **options}
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=raw_key(who), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def claude(
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


def check_anthropic_error(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if type_ != "request_too_large":  # the API's own type for 413, missing from the SDK's union
        AnthropicErrorResponse.model_validate(body)
    assert body["type"] == "error"
    assert set(body) <= {"type", "error", "request_id"}
    error = body["error"]
    assert error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    return error


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


def check_event_grammar(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Anthropic's stream grammar: message_start first; blocks 0, 1, ... each opened, given its
    deltas and closed before the next opens; message_delta then message_stop last. Pings anywhere.
    """
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == names.count("message_stop") == 1
    open_index: int | None = None
    started: list[int] = []
    stopped: list[int] = []
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None, "a block opened while another is open"
            open_index = data["index"]
            started.append(data["index"])
        elif name == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
        elif name == "content_block_stop":
            assert data["index"] == open_index, "a stop for a block that is not open"
            stopped.append(data["index"])
            open_index = None
        elif name in ("message_delta", "message_stop"):
            assert open_index is None, f"{name} while block {open_index} is open"
    assert started == list(range(len(started))), "block indices are 0, 1, 2, ..."
    assert stopped == started, "every content_block_start has its content_block_stop"


def echoed(text: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """What the fake's ``echo`` model received: (request JSON, lower-cased headers)."""
    assert text is not None
    data = json.loads(text)
    return data["body"], data["headers"]


# === 1. OpenAI clients, Anthropic upstream (/v1/chat/completions) ================================


def test_chat_to_claude_answers_and_bills_cache_tokens(
    server: GatewayServer, tenants: dict[str, TenantKey], oai: Callable[..., openai.OpenAI]
) -> None:
    alice = tenants["alice"]
    raw = oai(alice).chat.completions.with_raw_response.create(model="claude-test", messages=HELLO)
    completion = raw.parse()

    validate("CreateChatCompletionResponse", raw.http_response.json())
    assert completion.model == "claude-test"
    assert completion.choices[0].message.content == STREAM_TEXT
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        AN_PROMPT,
        AN_OUTPUT,
        AN_PROMPT + AN_OUTPUT,
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == AN_CACHE_READ

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=False,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
def test_chat_stream_to_claude_answers_and_bills_cache_tokens(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    include_usage: bool,
) -> None:
    alice = tenants["alice"]
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = oai(alice).chat.completions.with_raw_response.create(
        model="claude-test", messages=HELLO, stream=True, **extra
    )
    chunks = list(raw.parse())

    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.to_dict())
        assert chunk.model == "claude-test"
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == STREAM_TEXT
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason] == [
        "stop"
    ]
    assert len({chunk.id for chunk in chunks}) == 1
    usage_chunks = [chunk for chunk in chunks if not chunk.choices]
    if include_usage:
        assert usage_chunks == [chunks[-1]], "one usage chunk, last"
        usage = chunks[-1].usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
            AN_PROMPT,
            AN_OUTPUT,
            AN_PROMPT + AN_OUTPUT,
        )
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == AN_CACHE_READ
    else:
        assert usage_chunks == [], "a usage chunk reached a client that never asked"
        assert all(chunk.usage is None for chunk in chunks)

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=True,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_to_claude_tool_use_is_a_tool_call(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    raw = oai(alice).chat.completions.with_raw_response.create(
        model="claude-tool", messages=WEATHER, tools=TOOLS, stream=stream
    )
    if stream:
        chunks = list(raw.parse())
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk.to_dict())
        deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
        text = "".join(delta.content or "" for delta in deltas)
        calls = [call for delta in deltas for call in delta.tool_calls or ()]
        assert {call.index for call in calls} == {0}
        headers = [call for call in calls if call.id]
        assert len(headers) == 1, "one tool call, announced once"
        assert (headers[0].id, headers[0].type) == ("toolu_fake1", "function")
        assert headers[0].function is not None
        name = headers[0].function.name
        arguments = "".join(call.function.arguments or "" for call in calls if call.function)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert [f for f in finishes if f] == ["tool_calls"]
    else:
        validate("CreateChatCompletionResponse", raw.http_response.json())
        choice = raw.parse().choices[0]
        text = choice.message.content or ""
        assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id == "toolu_fake1"
        name, arguments = call.function.name, call.function.arguments
        assert choice.finish_reason == "tool_calls"
    assert text == "Let me check."
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model="claude-tool",
        provider="claude",
        upstream_model="tool-use",
        stream=stream,
    )
    assert_claude_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_to_claude_sends_an_anthropic_request_with_the_gateway_credential(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]},
    ]
    raw = oai(alice).chat.completions.with_raw_response.create(
        model="claude-echo",
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        temperature=1.5,
        stop="END",
        user="user-42",
        seed=7,
        stream=stream,
    )
    if stream:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = raw.parse().choices[0].message.content or ""
    sent, headers = echoed(text)

    assert sent["model"] == "echo", "the upstream gets its own model name"
    assert sent["max_tokens"] == 4096, "Anthropic requires max_tokens: the default is filled in"
    assert sent["system"] == "Be brief.", "the system message is hoisted"
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]}]
    function = TOOLS[0]["function"]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": function["parameters"],
            "description": function["description"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["temperature"] == 1, "OpenAI's 0-2 capped to Anthropic's 0-1"
    assert sent["stop_sequences"] == ["END"]
    assert sent["metadata"] == {"user_id": "user-42"}
    assert "seed" not in sent and "user" not in sent and "stop" not in sent
    assert sent.get("stream", False) is stream
    assert headers["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    assert headers["anthropic-version"] == PINNED_VERSION
    assert "authorization" not in headers, "Anthropic is sent x-api-key only"
    dumped = json.dumps([sent, headers])
    assert alice.raw not in dumped and alice.raw[:12] not in dumped
    assert UPSTREAM_OPENAI_KEY not in dumped

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model="claude-echo",
        provider="claude",
        upstream_model="echo",
        stream=stream,
    )
    assert (row.prompt_tokens, row.cache_read_tokens, row.cache_write_tokens) == (
        AN_PROMPT,
        AN_CACHE_READ,
        AN_CACHE_WRITE,
    )
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize(
    ("model", "status", "code", "received"),
    [
        ("claude-stream-error", 503, "upstream_overloaded", "tok0 tok1 "),
        ("claude-drop", 502, "upstream_unavailable", "tok0 tok1 "),
    ],
    ids=["error-event", "dropped-connection"],
)
def test_chat_stream_to_claude_failing_midway_is_in_band_and_billed_with_exact_prompt(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    model: str,
    status: int,
    code: str,
    received: str,
) -> None:
    alice = tenants["alice"]
    raw = oai(alice).chat.completions.with_raw_response.create(
        model=model, messages=HELLO, stream=True
    )
    assert raw.http_response.status_code == 200, "the stream had started: the error is in-band"
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            validate("CreateChatCompletionStreamResponse", chunk.to_dict())
            assert chunk.choices[0].finish_reason is None, "no clean finish on a failed stream"
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == received
    assert type(caught.value) is openai.APIError, "an error event, not a broken connection"
    assert isinstance(caught.value.body, dict)
    validate("Error", caught.value.body)
    assert caught.value.body["code"] == code

    row = one_row(raw.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model=model,
        provider="claude",
        upstream_model=CLAUDE_MODELS[model],
        stream=True,
        status=status,
        error=code,
    )
    assert row.usage_estimated is True
    # The input was reported exactly by message_start; the output is the larger of what was
    # reported (1) and the content chunks the client got (2).
    assert row.completion_tokens is not None and row.completion_tokens >= 2
    assert_claude_usage(row, completion=row.completion_tokens)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("claude-fail-500", 502, "upstream_unavailable"),
        ("claude-overloaded", 503, "upstream_overloaded"),
    ],
    ids=["fail-500", "overloaded"],
)
def test_chat_to_failing_claude_is_an_openai_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    oai: Callable[..., openai.OpenAI],
    model: str,
    status: int,
    code: str,
    stream: bool,
) -> None:
    alice = tenants["alice"]
    with pytest.raises(openai.InternalServerError) as caught:
        oai(alice).chat.completions.create(model=model, messages=HELLO, stream=stream)
    response = caught.value.response
    check_error(response, status, type="upstream_error", code=code)
    assert response.headers["x-should-retry"] == "true"
    assert UPSTREAM_ANTHROPIC_KEY not in response.text

    row = one_row(response.headers["x-request-id"])
    assert_row(
        row,
        alice,
        endpoint="chat.completions",
        model=model,
        provider="claude",
        upstream_model=CLAUDE_MODELS[model],
        stream=stream,
        status=status,
        error=code,
    )
    assert row.cost_usd == 0
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


# === 2. the same OpenAI request shapes, OpenAI-routed or Anthropic-routed ========================

SHAPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "stream": {"stream": True, "stream_options": {"include_usage": True}},
    "tools": {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
    "tools-stream": {"tools": TOOLS, "stream": True},
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("model", ["gpt-test", "claude-test"])
def test_openai_and_anthropic_routed_answers_validate_against_the_same_schema(
    server: GatewayServer, tenants: dict[str, TenantKey], model: str, shape: str
) -> None:
    alice = tenants["alice"]
    body = {
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, *HELLO],
        "max_tokens": 100,
        **SHAPES[shape],
    }
    validate("CreateChatCompletionRequest", body)
    response = httpx.post(
        server.base_url + "/v1/chat/completions", headers=alice.headers, json=body, timeout=10
    )
    assert response.status_code == 200, response.text

    if body.get("stream"):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.text)
        assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
        chunks = [json.loads(event) for event in events[:-1]]
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
        contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert "".join(content or "" for content in contents) == STREAM_TEXT
        usage_chunks = [chunk for chunk in chunks if not chunk["choices"]]
        assert len(usage_chunks) == (1 if "stream_options" in body else 0)
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert [f for f in finishes if f] == ["stop"]
    else:
        answer = response.json()
        validate("CreateChatCompletionResponse", answer)
        assert answer["choices"][0]["message"]["content"] == STREAM_TEXT
        assert answer["choices"][0]["finish_reason"] == "stop"

    row = one_row(response.headers["x-request-id"])
    assert (row.status_code, row.stream) == (200, bool(body.get("stream")))
    if model == "claude-test":
        assert_claude_usage(row)
    else:
        assert_gpt_usage(row)


# === 3. Anthropic clients: /v1/messages =========================================================

# --- 3a. an Anthropic upstream: passed through ---------------------------------------------------


def test_messages_native_answers_with_anthropic_usage_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    raw = claude(alice).messages.with_raw_response.create(
        model="claude-test", max_tokens=64, messages=HELLO
    )
    message = raw.parse()

    assert raw.http_response.status_code == 200
    assert message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (AN_INPUT, AN_OUTPUT)
    assert usage.cache_creation_input_tokens == AN_CACHE_WRITE
    assert usage.cache_read_input_tokens == AN_CACHE_READ
    request_id = raw.headers["request-id"]
    assert request_id.startswith("req_") and request_id != "req_fake"
    assert raw.headers["x-request-id"] == request_id

    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=False,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    assert row.cost_usd == Decimal("0.0001239")
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_native_stream_gives_the_final_message_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    with claude(alice).messages.stream(
        model="claude-test", max_tokens=64, messages=HELLO
    ) as stream:
        request_id = stream.request_id
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(texts) == STREAM_TEXT
    assert len(texts) == 5, "the text arrives in pieces, as streamed"
    assert final.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens) == (AN_INPUT, AN_OUTPUT)
    assert usage.cache_creation_input_tokens == AN_CACHE_WRITE
    assert usage.cache_read_input_tokens == AN_CACHE_READ

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-test",
        provider="claude",
        upstream_model="claude-fake",
        stream=True,
    )
    assert_claude_usage(row)
    assert row.usage_estimated is False
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_native_tool_use_block(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    client = claude(alice)
    params: dict[str, Any] = {
        "model": "claude-tool",
        "max_tokens": 64,
        "messages": WEATHER,
        "tools": [ANTHROPIC_TOOL],
    }
    if stream:
        with client.messages.stream(**params) as events:
            request_id = events.request_id
            message = events.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(**params)
        request_id, message = raw.headers["request-id"], raw.parse()

    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."  # type: ignore[union-attr]
    tool = message.content[1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("toolu_fake1", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == AN_OUTPUT

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-tool",
        provider="claude",
        upstream_model="tool-use",
        stream=stream,
    )
    assert_claude_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


NATIVE_FIELDS: dict[str, Any] = {
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Héllo ✓"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Weather?"},
    ],
    "metadata": {"user_id": "user-42"},
    "stop_sequences": ["END"],
    "tools": [ANTHROPIC_TOOL],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
}
NATIVE_EXTRA: dict[str, Any] = {  # not in this SDK's parameters: sent as extra_body
    "top_k": 5,
    "x_vendor_field": {"nested": [1, 2.5, {"deep": None}], "text": "x\u2028y"},
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_native_request_reaches_anthropic_untouched_with_the_gateway_credential(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    client = claude(alice)
    if stream:
        with client.messages.stream(
            model="claude-echo", **NATIVE_FIELDS, extra_body=NATIVE_EXTRA, extra_headers=BETA
        ) as events:
            request_id = events.request_id
            message = events.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(
            model="claude-echo", **NATIVE_FIELDS, extra_body=NATIVE_EXTRA, extra_headers=BETA
        )
        request_id, message = raw.headers["request-id"], raw.parse()
    sent, headers = echoed(message.content[0].text)  # type: ignore[union-attr]

    assert sent["model"] == "echo", "the upstream gets its own model name"
    assert sent.get("stream", False) is stream
    passed = {key: value for key, value in sent.items() if key not in ("model", "stream")}
    assert passed == {**NATIVE_FIELDS, **NATIVE_EXTRA}, "every field passes through untouched"
    assert headers["x-api-key"] == UPSTREAM_ANTHROPIC_KEY
    # Passed through: the API version the client was written for, not the gateway's pin.
    assert headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert headers["anthropic-beta"] == "tools-2099-01-01"
    assert "authorization" not in headers, "the client's Bearer header is not passed on"
    dumped = json.dumps([sent, headers])
    assert alice.raw not in dumped and alice.raw[:12] not in dumped
    assert UPSTREAM_OPENAI_KEY not in dumped

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="claude-echo",
        provider="claude",
        upstream_model="echo",
        stream=stream,
    )
    assert (row.prompt_tokens, row.cache_read_tokens, row.cache_write_tokens) == (
        AN_PROMPT,
        AN_CACHE_READ,
        AN_CACHE_WRITE,
    )
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("claude-stream-error", 503, "overloaded_error", "upstream_overloaded"),
        ("claude-drop", 502, "api_error", "upstream_unavailable"),
    ],
    ids=["error-event", "dropped-connection"],
)
def test_messages_native_stream_failing_midway_raises_and_is_billed_with_exact_prompt(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    model: str,
    status: int,
    error_type: str,
    code: str,
) -> None:
    alice = tenants["alice"]
    texts: list[str] = []
    request_id = None
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude(alice).messages.stream(model=model, max_tokens=64, messages=HELLO) as stream,
    ):
        request_id = stream.request_id
        texts.extend(stream.text_stream)
    assert "".join(texts) == "tok0 tok1 ", "the text before the failure was delivered"
    assert type(caught.value) is anthropic.APIStatusError, "an in-band error event"
    body = caught.value.body
    assert isinstance(body, dict)
    AnthropicErrorResponse.model_validate(body)
    assert body["error"]["type"] == error_type

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model=model,
        provider="claude",
        upstream_model=CLAUDE_MODELS[model],
        stream=True,
        status=status,
        error=code,
    )
    assert row.usage_estimated is True
    assert row.completion_tokens is not None and row.completion_tokens >= 2
    assert_claude_usage(row, completion=row.completion_tokens)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_accepts_the_key_as_api_key_auth_token_or_x_api_key(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    request_ids = []
    for auth in ("api_key", "token", "header"):
        raw = claude(alice, auth=auth).messages.with_raw_response.create(
            model="claude-test", max_tokens=64, messages=HELLO
        )
        assert raw.parse().content[0].text == STREAM_TEXT  # type: ignore[union-attr]
        request_ids.append(raw.headers["request-id"])
        sent = raw.http_request.headers
        if auth == "header":
            assert sent["x-api-key"] == alice.raw and "authorization" not in sent
        else:
            assert alice.raw in (sent.get("x-api-key"), sent.get("authorization", "")[7:])
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": "claude-test", "max_tokens": 64, "messages": HELLO},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == STREAM_TEXT
    request_ids.append(response.headers["request-id"])

    rows = wait_for_rows(4, request_id__in=request_ids)
    assert len(rows) == 4
    assert {(row.tenant_id, row.api_key_id) for row in rows} == {(alice.tenant.pk, alice.key.pk)}


# --- 3b. an OpenAI upstream: translated ----------------------------------------------------------


def test_messages_translated_answers_as_an_anthropic_message_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    raw = claude(alice).messages.with_raw_response.create(
        model="gpt-test", max_tokens=64, system="Be brief.", messages=HELLO
    )
    message = raw.parse()

    assert message.type == "message" and message.role == "assistant"
    assert message.model == "gpt-test"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert usage.input_tokens == OA_PROMPT - OA_CACHED, "Anthropic's input excludes cached input"
    assert usage.output_tokens == OA_COMPLETION
    assert usage.cache_read_input_tokens == OA_CACHED
    assert usage.cache_creation_input_tokens == 0

    row = one_row(raw.headers["request-id"])
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-test",
        provider="fake",
        upstream_model="fake-gpt",
        stream=False,
    )
    assert_gpt_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_translated_stream_gives_the_final_message_and_bills_it(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    with claude(alice).messages.stream(
        model="gpt-test", max_tokens=64, system="Be brief.", messages=HELLO
    ) as stream:
        request_id = stream.request_id
        texts = list(stream.text_stream)
        final = stream.get_final_message()

    assert "".join(texts) == STREAM_TEXT
    assert final.model == "gpt-test"
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == STREAM_TEXT  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens) == (OA_PROMPT - OA_CACHED, OA_COMPLETION)
    assert usage.cache_read_input_tokens == OA_CACHED

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-test",
        provider="fake",
        upstream_model="fake-gpt",
        stream=True,
    )
    assert_gpt_usage(row)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_messages_translated_request_reaches_the_openai_upstream_in_openai_shape(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    params: dict[str, Any] = {
        "model": "gpt-echo",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": WEATHER,
        "tools": [ANTHROPIC_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "extra_body": {"top_k": 5},
    }
    client = claude(alice)
    if stream:
        with client.messages.stream(**params) as events:
            request_id = events.request_id
            message = events.get_final_message()
    else:
        raw = client.messages.with_raw_response.create(**params)
        request_id, message = raw.headers["request-id"], raw.parse()
    assert message.stop_reason == "end_turn"
    sent, headers = echoed(message.content[0].text)  # type: ignore[union-attr]

    validate("CreateChatCompletionRequest", sent)
    assert sent["model"] == "echo"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": WEATHER[0]["content"]},
    ], "the system prompt becomes the first message"
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_SCHEMA,
                "description": "Weather in a city.",
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["max_tokens"] == 64
    assert sent["stop"] == ["END"]
    assert sent["user"] == "user-42"
    for anthropic_only in ("system", "top_k", "metadata", "stop_sequences"):
        assert anthropic_only not in sent
    if stream:
        assert sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}, "usage is always asked for"
    else:
        assert sent.get("stream") in (None, False)
    assert headers["authorization"] == f"Bearer {UPSTREAM_OPENAI_KEY}"
    assert "x-api-key" not in headers and "anthropic-version" not in headers
    dumped = json.dumps([sent, headers])
    assert alice.raw not in dumped and alice.raw[:12] not in dumped

    assert request_id is not None
    row = one_row(request_id)
    assert_row(
        row,
        alice,
        endpoint="messages",
        model="gpt-echo",
        provider="fake",
        upstream_model="echo",
        stream=stream,
    )
    assert (row.prompt_tokens, row.completion_tokens) == (OA_PROMPT, OA_COMPLETION)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize(
    ("model", "text", "stop_reason"),
    [
        ("gpt-test", STREAM_TEXT, "end_turn"),
        ("claude-test", STREAM_TEXT, "end_turn"),
        ("claude-tool", "Let me check.", "tool_use"),
    ],
    ids=["translated", "native", "native-tool"],
)
def test_messages_stream_follows_anthropic_event_grammar(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    model: str,
    text: str,
    stop_reason: str,
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": model, "max_tokens": 64, "messages": HELLO, "stream": True},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert "[DONE]" not in response.text
    events = anthropic_events(response.text)
    check_event_grammar(events)

    start = events[0][1]["message"]
    assert start["id"].startswith("msg_")
    assert (start["type"], start["role"], start["content"]) == ("message", "assistant", [])
    assert start["stop_reason"] is None
    if model == "gpt-test":
        assert start["model"] == "gpt-test"
    streamed = "".join(
        data["delta"]["text"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )
    assert streamed == text
    message_delta = next(data for name, data in events if name == "message_delta")
    assert message_delta["delta"]["stop_reason"] == stop_reason
    expected_output = OA_COMPLETION if model == "gpt-test" else AN_OUTPUT
    assert message_delta["usage"]["output_tokens"] == expected_output
    if model == "gpt-test":
        assert message_delta["usage"]["input_tokens"] == OA_PROMPT - OA_CACHED
        assert message_delta["usage"]["cache_read_input_tokens"] == OA_CACHED

    row = one_row(response.headers["request-id"])
    assert (row.status_code, row.endpoint, row.stream) == (200, "messages", True)
    assert row.usage_estimated is False


# --- 3c. errors, in Anthropic's shape ------------------------------------------------------------


def _bad_key(tenants: dict[str, TenantKey]) -> str:
    return "tg-" + "x" * 43


def _wrong_secret(tenants: dict[str, TenantKey]) -> str:
    raw = tenants["alice"].raw
    return raw[:12] + ("y" if raw[12] != "y" else "z") * (len(raw) - 12)


@pytest.mark.parametrize("make_key", [_bad_key, _wrong_secret], ids=["unknown", "wrong-secret"])
def test_messages_rejected_key_is_401_authentication_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    make_key: Callable[[dict[str, TenantKey]], str],
) -> None:
    key = make_key(tenants)
    for auth in ("api_key", "token", "header"):
        for stream in (False, True):
            with pytest.raises(anthropic.AuthenticationError) as caught:
                claude(key, auth=auth).messages.create(
                    model="claude-test", max_tokens=64, messages=HELLO, stream=stream
                )
            check_anthropic_error(caught.value.response, 401, "authentication_error")
            assert key not in caught.value.response.text
    for headers in (x_api_key(key), {"anthropic-version": "2023-06-01"}):
        response = httpx.post(
            messages_url(server),
            headers=headers,
            json={"model": "gpt-test", "max_tokens": 64, "messages": HELLO},
            timeout=10,
        )
        check_anthropic_error(response, 401, "authentication_error")
        assert response.headers["x-should-retry"] == "false"

    settle(server, tenants["bob"])
    assert UsageRecord.objects.exclude(tenant=tenants["bob"].tenant).count() == 0


def test_messages_unknown_model_is_404_not_found_error(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    request_ids = []
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as caught:
            claude(alice).messages.create(
                model="claude-nope", max_tokens=64, messages=HELLO, stream=stream
            )
        error = check_anthropic_error(caught.value.response, 404, "not_found_error")
        assert "claude-nope" in error["message"]
        request_ids.append(caught.value.response.headers["request-id"])

    rows = wait_for_rows(2, request_id__in=request_ids)
    assert len(rows) == 2
    for row, stream in zip(rows, (False, True), strict=True):
        assert_row(
            row,
            alice,
            endpoint="messages",
            model="claude-nope",
            provider="",
            upstream_model="",
            stream=stream,
            status=404,
            error="model_not_found",
        )
        assert row.cost_usd == 0
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "claude-test", "max_tokens": 64, "messages": [', "invalid_json"),
        (b"[]", "invalid_json"),
        (b'{"model": "gpt-test", "max_tokens": 64, "messages": []}', "invalid_value"),
        (b'{"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}', "invalid_request"),
        # Regression: messages that were not a list crashed the call (a 500) before routing.
        (b'{"model": "claude-test", "max_tokens": 64, "messages": true}', "invalid_value"),
        (b'{"model": "gpt-test", "max_tokens": 64, "messages": 5}', "invalid_value"),
        (b'{"model": "claude-test", "max_tokens": 64, "messages": []}', "invalid_value"),
    ],
    ids=[
        "truncated-json",
        "array",
        "translated-no-messages",
        "no-model",
        "native-messages-not-a-list",
        "translated-messages-not-a-list",
        "native-no-messages",
    ],
)
def test_messages_invalid_body_is_400_invalid_request_error(
    server: GatewayServer, tenants: dict[str, TenantKey], body: bytes, code: str
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        messages_url(server),
        content=body,
        headers={**x_api_key(alice), "content-type": "application/json"},
        timeout=10,
    )
    check_anthropic_error(response, 400, "invalid_request_error")

    row = one_row(response.headers["request-id"])
    assert (row.status_code, row.error_type, row.endpoint) == (400, code, "messages")
    assert (row.tenant_id, row.api_key_id) == (alice.tenant.pk, alice.key.pk)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


MESSAGES_FAILURES = [
    # (model, status, Anthropic error type, ledger error, SDK exception)
    ("claude-fail-500", 502, "api_error", "upstream_unavailable", anthropic.InternalServerError),
    ("gpt-fail-500", 502, "api_error", "upstream_unavailable", anthropic.InternalServerError),
    (
        "claude-overloaded",
        503,
        "overloaded_error",
        "upstream_overloaded",
        anthropic.InternalServerError,
    ),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "error_type", "code", "exception"),
    MESSAGES_FAILURES,
    ids=[failure[0] for failure in MESSAGES_FAILURES],
)
def test_messages_upstream_failure_is_an_anthropic_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    model: str,
    status: int,
    error_type: str,
    code: str,
    exception: type[anthropic.APIStatusError],
    stream: bool,
) -> None:
    alice = tenants["alice"]
    with pytest.raises(exception) as caught:
        claude(alice).messages.create(model=model, max_tokens=64, messages=HELLO, stream=stream)
    response = caught.value.response
    check_anthropic_error(response, status, error_type)
    assert response.headers["x-should-retry"] == "true"
    for secret in (UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY, alice.raw):
        assert secret not in response.text

    row = one_row(response.headers["request-id"])
    provider = "claude" if model.startswith("claude") else "fake"
    upstream = {**CLAUDE_MODELS, **GPT_MODELS}[model]
    assert_row(
        row,
        alice,
        endpoint="messages",
        model=model,
        provider=provider,
        upstream_model=upstream,
        stream=stream,
        status=status,
        error=code,
    )
    assert row.cost_usd == 0
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


def test_messages_translated_stream_cut_off_raises_and_is_billed_as_estimated(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice = tenants["alice"]
    texts: list[str] = []
    request_id = None
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude(alice).messages.stream(model="gpt-drop", max_tokens=64, messages=HELLO) as stream,
    ):
        request_id = stream.request_id
        texts.extend(stream.text_stream)
    assert "".join(texts) == "tok0 tok1 "
    assert type(caught.value) is anthropic.APIStatusError, "an in-band error event"
    body = caught.value.body
    assert isinstance(body, dict)
    AnthropicErrorResponse.model_validate(body)
    assert body["error"]["type"] == "api_error"

    # The same call as raw SSE: the error event ends the stream, no message_stop.
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": "gpt-drop", "max_tokens": 64, "messages": HELLO, "stream": True},
        timeout=10,
    )
    events = anthropic_events(response.text)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error"
    assert "message_stop" not in [name for name, _ in events]

    assert request_id is not None
    rows = wait_for_rows(2, request_id__in=[request_id, response.headers["request-id"]])
    assert len(rows) == 2
    for row in rows:
        assert_row(
            row,
            alice,
            endpoint="messages",
            model="gpt-drop",
            provider="fake",
            upstream_model="drop-mid-stream",
            stream=True,
            status=502,
            error="upstream_unavailable",
        )
        assert row.usage_estimated is True
        assert row.completion_tokens == 2
        assert row.prompt_tokens is not None and row.prompt_tokens >= 1
        assert row.cost_usd == Decimal(row.prompt_tokens + 2 * 2) / Decimal(1_000_000)
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 2


MESSAGES_RATE_LIMITED = ["claude-fail-429", "gpt-fail-429"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("model", MESSAGES_RATE_LIMITED)
def test_messages_rate_limited_upstream_is_429_rate_limit_error(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    claude: Callable[..., anthropic.Anthropic],
    model: str,
    stream: bool,
) -> None:
    alice = tenants["alice"]
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude(alice).messages.create(model=model, max_tokens=64, messages=HELLO, stream=stream)
    response = caught.value.response
    error = check_anthropic_error(response, 429, "rate_limit_error")
    assert "Rate limit reached" in error["message"], "an upstream 4xx explains itself"
    assert response.headers["x-should-retry"] == "true"

    row = one_row(response.headers["request-id"])
    assert (row.status_code, row.error_type, row.endpoint) == (
        429,
        "rate_limit_exceeded",
        "messages",
    )
    assert row.stream is stream
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


@pytest.mark.parametrize("model", MESSAGES_RATE_LIMITED)
def test_messages_429_tells_the_client_when_to_retry(
    server: GatewayServer, tenants: dict[str, TenantKey], model: str
) -> None:
    alice = tenants["alice"]
    response = httpx.post(
        messages_url(server),
        headers=x_api_key(alice),
        json={"model": model, "max_tokens": 64, "messages": HELLO},
        timeout=10,
    )
    one_row(response.headers["request-id"])
    check_anthropic_error(response, 429, "rate_limit_error")
    assert response.headers.get("retry-after") is not None


def _wrong_method(server: GatewayServer, who: TenantKey) -> httpx.Response:
    return httpx.get(messages_url(server), headers=x_api_key(who), timeout=10)


def _too_large(server: GatewayServer, who: TenantKey) -> httpx.Response:
    messages = [{"role": "user", "content": "x" * MAX_BODY}]
    body = {"model": "claude-test", "max_tokens": 64, "messages": messages}
    return httpx.post(messages_url(server), headers=x_api_key(who), json=body, timeout=10)


@pytest.mark.parametrize(
    ("call", "status", "error_type"),
    [(_wrong_method, 405, "invalid_request_error"), (_too_large, 413, "request_too_large")],
    ids=["wrong-method-405", "too-large-413"],
)
def test_messages_errors_outside_the_view_are_in_anthropic_shape(
    server: GatewayServer,
    tenants: dict[str, TenantKey],
    call: Callable[[GatewayServer, TenantKey], httpx.Response],
    status: int,
    error_type: str,
) -> None:
    response = call(server, tenants["alice"])
    assert response.status_code == status  # what works already
    check_anthropic_error(response, status, error_type)


@pytest.mark.parametrize(
    ("model", "provider"),
    [("claude-slow-stream", "claude"), ("gpt-slow-stream", "fake")],
    ids=["native", "translated"],
)
def test_messages_client_disconnect_mid_stream_is_billed_at_once_as_499(
    server: GatewayServer, tenants: dict[str, TenantKey], model: str, provider: str
) -> None:
    alice = tenants["alice"]
    body = {"model": model, "max_tokens": 64, "messages": HELLO, "stream": True}
    deltas = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", messages_url(server), headers=x_api_key(alice), json=body
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["request-id"]
        for line in response.iter_lines():
            if line.startswith("data: ") and '"text_delta"' in line:
                deltas += 1
                if deltas == 3:
                    break
    closed_at = time.monotonic()

    rows = wait_for_rows(1, timeout=9.0, request_id=request_id)
    waited = time.monotonic() - closed_at
    assert rows, "no ledger row for the abandoned stream"
    assert waited < 5.0, f"the row took {waited:.1f} s: the gateway streamed on to the end"
    row = rows[0]
    assert_row(
        row,
        alice,
        endpoint="messages",
        model=model,
        provider=provider,
        upstream_model="slow-stream",
        stream=True,
        status=499,
        error="client_disconnected",
    )
    assert row.usage_estimated is True
    assert row.completion_tokens is not None and deltas <= row.completion_tokens <= 99
    if provider == "claude":  # message_start reported the input exactly
        assert_claude_usage(row, completion=row.completion_tokens)
    else:
        assert row.prompt_tokens is not None and row.prompt_tokens >= 1
    settle(server, tenants["bob"])
    assert len(rows_of(alice)) == 1


# === 4. tenants are isolated ======================================================================


def test_messages_calls_are_billed_to_their_own_tenant(
    server: GatewayServer, tenants: dict[str, TenantKey], claude: Callable[..., anthropic.Anthropic]
) -> None:
    alice, bob, charlie = tenants["alice"], tenants["bob"], tenants["charlie"]
    expected: dict[str, tuple[TenantKey, str, bool]] = {}
    calls = [
        (bob, "claude-test", False),
        (bob, "claude-test", True),
        (bob, "gpt-test", False),
        (bob, "gpt-test", True),
        (alice, "claude-test", False),
    ]
    for who, model, stream in calls:
        client = claude(who)
        if stream:
            with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as events:
                request_id = events.request_id
                events.get_final_message()
        else:
            raw = client.messages.with_raw_response.create(
                model=model, max_tokens=64, messages=HELLO
            )
            request_id = raw.headers["request-id"]
        assert request_id is not None
        expected[request_id] = (who, model, stream)

    rows = wait_for_rows(len(calls), request_id__in=list(expected))
    assert len(rows) == len(calls)
    for row in rows:
        who, model, stream = expected[row.request_id]
        assert (row.tenant_id, row.api_key_id) == (who.tenant.pk, who.key.pk)
        assert (row.requested_model, row.stream, row.endpoint) == (model, stream, "messages")
    settle(server, charlie)
    assert UsageRecord.objects.filter(tenant=bob.tenant, endpoint="messages").count() == 4
    assert UsageRecord.objects.filter(tenant=alice.tenant).count() == 1
    assert UsageRecord.objects.filter(tenant=charlie.tenant, endpoint="messages").count() == 0
    bob_cost = sum((row.cost_usd for row in rows_of(bob)), Decimal(0))
    assert bob_cost == 2 * CLAUDE_COST + 2 * GPT_TEST_COST
    assert [row.cost_usd for row in rows_of(alice)] == [CLAUDE_COST]
