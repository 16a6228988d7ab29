"""The Anthropic provider against an upstream faked at the HTTP boundary (and, marked e2e, against
the fake upstream process). What the tenant gets must validate against OpenAI's own schemas."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from providers.anthropic import AnthropicProvider
from providers.base import (
    ChatRequest,
    EmbeddingRequest,
    FormFile,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from providers.config import GatewayConfig, ProviderConfig
from providers.errors import (
    InvalidRequest,
    ProviderError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.factory import ProviderFactory, default_transport
from providers.http import UpstreamClient
from providers.types import StreamChunk, Usage

SCHEMAS = json.loads(
    Path(
        os.environ.get("OPENAI_SCHEMAS", Path(__file__).parent / "spec" / "openai_schemas.json")
    ).read_text()
)
REGISTRY: Registry = Registry().with_resource("urn:openai", Resource.from_contents(SCHEMAS))


def validate(schema_name: str, instance: Any) -> None:
    schema = {"$ref": f"urn:openai#/schemas/{schema_name}"}
    Draft202012Validator(schema, registry=REGISTRY).validate(instance)


Handler = Callable[[httpx.Request], httpx.Response]


def provider(
    handler: Handler, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> AnthropicProvider:
    monkeypatch.setenv("ANTHROPIC_UP_KEY", "sk-ant-up")
    config = ProviderConfig(
        type="anthropic",
        base_url="http://up.test/v1/",
        api_key_env="ANTHROPIC_UP_KEY",
        headers={"anthropic-beta": "feature-a", "Authorization": "Bearer never-sent"},
        **options,
    )
    return AnthropicProvider(
        "claude", config, UpstreamClient(transport=httpx.MockTransport(handler))
    )


def request(**fields: Any) -> ChatRequest:
    body = {"model": "claude-alias", "messages": [{"role": "user", "content": "hello"}], **fields}
    return ChatRequest.from_body(body)


MESSAGE: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-up",
    "content": [{"type": "text", "text": "Hi there."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 11,
        "output_tokens": 5,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    },
}


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"
        for name, data in events
    )


def stream_events(
    *middle: tuple[str, dict[str, Any]], stop_reason: str = "end_turn"
) -> list[tuple[str, dict[str, Any]]]:
    start = {
        **MESSAGE,
        "content": [],
        "stop_reason": None,
        "usage": {**MESSAGE["usage"], "output_tokens": 1},
    }
    return [
        ("message_start", {"type": "message_start", "message": start}),
        *middle,
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


TEXT_BLOCK: list[tuple[str, dict[str, Any]]] = [
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "there."},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
]
TOOL_BLOCK: list[tuple[str, dict[str, Any]]] = [
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def streaming(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


async def test_chat_sends_anthropic_headers_url_and_body(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=MESSAGE)

    result = await provider(handler, monkeypatch).chat(
        request(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello"},
            ],
            max_tokens=64,
        ),
        "claude-up",
    )
    sent = seen[0]
    assert (sent.method, str(sent.url)) == ("POST", "http://up.test/v1/messages")
    assert sent.headers["x-api-key"] == "sk-ant-up"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "feature-a"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert orjson.loads(sent.content) == {
        "model": "claude-up",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    }
    validate("CreateChatCompletionResponse", result.body)
    assert result.raw is None
    assert result.body["model"] == "claude-alias"
    assert result.body["choices"][0]["message"]["content"] == "Hi there."
    assert result.usage == Usage(
        prompt_tokens=18,
        completion_tokens=5,
        total_tokens=23,
        cache_read_tokens=3,
        cache_write_tokens=4,
    )


async def test_chat_with_tool_use_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    content = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**MESSAGE, "content": content, "stop_reason": "tool_use"})

    result = await provider(handler, monkeypatch).chat(request(tools=[WEATHER_TOOL]), "claude-up")
    validate("CreateChatCompletionResponse", result.body)
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'


async def test_the_configured_version_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=MESSAGE)

    claude = provider(handler, monkeypatch, anthropic_version="2026-10-21")
    await claude.chat(request(temperature=0.5), "claude-up")
    assert seen[0].headers["anthropic-version"] == "2026-10-21"
    assert "temperature" not in orjson.loads(seen[0].content)


async def test_an_invalid_request_never_reaches_the_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("called the upstream")

    bad = {
        "role": "assistant",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
        ],
    }
    with pytest.raises(InvalidRequest) as info:
        await provider(handler, monkeypatch).chat(request(messages=[bad]), "claude-up")
    assert info.value.status == 400


async def test_stream_translates_events_into_valid_openai_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[dict[str, Any]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(req.content))
        return streaming(sse(*stream_events(*TEXT_BLOCK, *TOOL_BLOCK, stop_reason="tool_use")))

    claude = provider(handler, monkeypatch)
    chunks = [
        c async for c in claude.stream(request(stream=True, tools=[WEATHER_TOOL]), "claude-up")
    ]
    assert sent[0]["stream"] is True and sent[0]["tools"][0]["name"] == "get_weather"
    for item in chunks:
        validate("CreateChatCompletionStreamResponse", item.payload)
    assert len({(c.payload["id"], c.payload["created"], c.payload["model"]) for c in chunks}) == 1
    assert [c.is_usage_only for c in chunks] == [False] * 7 + [True]
    deltas = [c.payload["choices"][0]["delta"] for c in chunks[:-1]]
    assert [d.get("content") for d in deltas[:3]] == ["", "Hi ", "there."]
    assert deltas[3]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert (
        "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[3:6])
        == '{"city": "Paris"}'
    )
    assert chunks[6].payload["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1].usage == Usage(
        prompt_tokens=18,
        completion_tokens=5,
        total_tokens=23,
        cache_read_tokens=3,
        cache_write_tokens=4,
    )
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_split_into_small_crlf_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    body = sse(*stream_events(*TEXT_BLOCK)).replace(b"\n", b"\r\n")

    async def split() -> Any:
        for i in range(0, len(body), 5):
            yield body[i : i + 5]

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=split())

    chunks = [c async for c in provider(handler, monkeypatch).stream(request(), "claude-up")]
    text = "".join(
        c.payload["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c.payload["choices"]
    )
    assert text == "Hi there."


async def test_an_error_event_raises_after_the_chunks_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    events = stream_events(*TEXT_BLOCK[:3])[:1] + TEXT_BLOCK[:3] + [error]

    def handler(req: httpx.Request) -> httpx.Response:
        return streaming(sse(*events))

    received: list[StreamChunk] = []
    with pytest.raises(UpstreamUnavailable) as info:
        async for item in provider(handler, monkeypatch).stream(request(), "claude-up"):
            received.append(item)
    assert [c.payload["choices"][0]["delta"].get("content") for c in received] == ["", "Hi "]
    assert (info.value.status, info.value.code) == (503, "upstream_overloaded")
    assert info.value.usage_so_far == Usage(
        prompt_tokens=18,
        completion_tokens=1,
        total_tokens=19,
        cache_read_tokens=3,
        cache_write_tokens=4,
    )


async def test_a_stream_cut_before_message_stop_is_an_error_with_usage_so_far(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return streaming(sse(*stream_events(*TEXT_BLOCK)[:-1]))  # message_delta, no message_stop

    received: list[StreamChunk] = []
    with pytest.raises(UpstreamUnavailable, match="before it finished") as info:
        async for item in provider(handler, monkeypatch).stream(request(), "claude-up"):
            received.append(item)
    assert all(c.payload["choices"][0]["finish_reason"] is None for c in received)
    assert info.value.usage_so_far is not None and info.value.usage_so_far.completion_tokens == 5


async def test_a_transport_failure_mid_stream_carries_usage_so_far(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    head = sse(*stream_events(*TEXT_BLOCK)[:3])

    async def broken() -> Any:
        yield head
        raise httpx.RemoteProtocolError("peer closed connection")

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=broken())

    with pytest.raises(UpstreamUnavailable) as info:
        async for _ in provider(handler, monkeypatch).stream(request(), "claude-up"):
            pass
    assert info.value.usage_so_far is not None and info.value.usage_so_far.prompt_tokens == 18


async def test_an_event_that_is_not_json_is_an_upstream_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return streaming(b"event: message_start\ndata: {nope\n\n")

    with pytest.raises(UpstreamUnavailable):
        async for _ in provider(handler, monkeypatch).stream(request(), "claude-up"):
            pass


ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error_class", "client_status", "code"),
    [
        (400, UpstreamRejected, 400, "upstream_rejected"),
        (401, UpstreamUnavailable, 502, "upstream_auth_failed"),
        (403, UpstreamUnavailable, 502, "upstream_auth_failed"),
        (404, UpstreamRejected, 404, "model_not_found"),
        (413, UpstreamRejected, 413, "upstream_rejected"),
        (429, UpstreamRejected, 429, "rate_limit_exceeded"),
        (500, UpstreamUnavailable, 502, "upstream_unavailable"),
        (504, UpstreamTimeout, 504, "upstream_timeout"),
        (529, UpstreamUnavailable, 503, "upstream_overloaded"),
    ],
)
async def test_upstream_statuses_are_classified(
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
    status: int,
    error_class: type[ProviderError],
    client_status: int,
    code: str,
) -> None:
    body = {
        "type": "error",
        "error": {"type": ANTHROPIC_ERRORS[status], "message": "key sk-ant-up*** says no"},
        "request_id": "req_1",
    }

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"request-id": "req_1"})

    claude = provider(handler, monkeypatch)
    with pytest.raises(error_class) as info:
        if stream:
            await anext(claude.stream(request(stream=True), "claude-up"))
        else:
            await claude.chat(request(), "claude-up")
    assert (info.value.status, info.value.code) == (client_status, code)
    assert info.value.usage_so_far is None
    passes_message = status in (400, 404, 413, 429)
    assert ("says no" in info.value.message) is passes_message
    assert "sk-ant-up" not in info.value.message  # even a masked key is redacted
    validate("ErrorResponse", info.value.to_openai())


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"id": "msg_1"}'])
async def test_a_response_that_is_not_a_message_is_a_502(
    monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content)

    with pytest.raises(UpstreamUnavailable):
        await provider(handler, monkeypatch).chat(request(), "claude-up")


@pytest.mark.parametrize(
    ("exception", "error_class"),
    [
        (httpx.ConnectError("refused"), UpstreamUnavailable),
        (httpx.ReadTimeout("slow"), UpstreamTimeout),
    ],
)
async def test_transport_failures(
    monkeypatch: pytest.MonkeyPatch, exception: Exception, error_class: type[ProviderError]
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise exception

    with pytest.raises(error_class):
        await provider(handler, monkeypatch).chat(request(), "claude-up")


async def test_only_chat_is_implemented(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[httpx.Request] = []
    claude = provider(lambda req: calls.append(req) or httpx.Response(500), monkeypatch)
    with pytest.raises(NotImplementedError):
        await claude.embed(EmbeddingRequest.from_body({"model": "m", "input": "x"}), "claude-up")
    with pytest.raises(NotImplementedError):
        await claude.image_gen(ImageRequest.from_body({"model": "m", "prompt": "a"}), "claude-up")
    with pytest.raises(NotImplementedError):
        await claude.text_to_speech(SpeechRequest.from_body({"model": "m", "input": "hi"}), "c")
    audio = TranscriptionRequest(
        "m", [("model", "m")], [FormFile("file", "a.wav", "audio/wav", b"x")]
    )
    with pytest.raises(NotImplementedError):
        await claude.transcribe(audio, "claude-up")
    assert calls == []


async def test_the_factory_builds_anthropic_providers() -> None:
    config = GatewayConfig.model_validate(
        {
            "providers": {"claude": {"type": "anthropic", "base_url": "http://up.test/v1"}},
            "models": {"claude-alias": {"provider": "claude", "upstream_model": "claude-up"}},
        }
    )
    factory = ProviderFactory(
        config, transport=lambda _: httpx.MockTransport(lambda r: httpx.Response(200, json=MESSAGE))
    )
    route = factory.resolve("claude-alias")
    assert isinstance(route.provider, AnthropicProvider)
    result = await route.provider.chat(request(), route.upstream_model)
    assert result.body["choices"][0]["message"]["content"] == "Hi there."
    await factory.aclose()


# --- against the fake upstream process ------------------------------------------------------------


@pytest.fixture
async def fake_claude(fake_upstream: str) -> Any:
    config = ProviderConfig(type="anthropic", base_url=fake_upstream + "/v1")
    client = UpstreamClient(transport=default_transport(config), timeout=10)
    claude = AnthropicProvider("fake-claude", config, client)
    yield claude
    await claude.aclose()


@pytest.mark.e2e
async def test_fake_upstream_echo_sees_the_anthropic_request(
    fake_claude: AnthropicProvider,
) -> None:
    result = await fake_claude.chat(request(max_completion_tokens=9), "echo")
    echoed = json.loads(result.body["choices"][0]["message"]["content"])
    assert echoed["body"]["max_tokens"] == 9 and echoed["body"]["model"] == "echo"
    assert echoed["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in echoed["headers"]


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["normal", "tool-use"])
async def test_fake_upstream_chat_and_stream_agree(
    fake_claude: AnthropicProvider, model: str
) -> None:
    whole = await fake_claude.chat(request(), model)
    validate("CreateChatCompletionResponse", whole.body)
    chunks = [c async for c in fake_claude.stream(request(stream=True), model)]
    for item in chunks:
        validate("CreateChatCompletionStreamResponse", item.payload)
    message = whole.body["choices"][0]["message"]
    deltas = [c.payload["choices"][0]["delta"] for c in chunks if c.payload["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    arguments = "".join(
        call["function"]["arguments"] for d in deltas for call in d.get("tool_calls") or []
    )
    expected = "".join(call["function"]["arguments"] for call in message.get("tool_calls") or [])
    assert json.loads(arguments or "{}") == json.loads(expected or "{}")
    assert (
        chunks[-1].usage
        == whole.usage
        == Usage(
            prompt_tokens=18,
            completion_tokens=5,
            total_tokens=23,
            cache_read_tokens=3,
            cache_write_tokens=4,
        )
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [
        ("stream-error", UpstreamUnavailable, 503),
        ("drop-mid-stream", UpstreamUnavailable, 502),
        ("overloaded", UpstreamUnavailable, 503),
    ],
)
async def test_fake_upstream_stream_failures(
    fake_claude: AnthropicProvider, model: str, error_class: type[ProviderError], status: int
) -> None:
    received: list[StreamChunk] = []
    with pytest.raises(error_class) as info:
        async for item in fake_claude.stream(request(stream=True), model):
            received.append(item)
    assert info.value.status == status
    if model != "overloaded":
        assert len(received) == 3  # role, then two text deltas
        assert info.value.usage_so_far is not None and info.value.usage_so_far.prompt_tokens == 18
