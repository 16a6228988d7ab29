"""Malformed upstream answers found failing the call (a 500, a stream whose end the ledger and the
caller saw differently, an error logged), most by tests/test_fuzz_upstream.py: each pinned by a
named example."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from support.inprocess import ANTHROPIC_PATH, api_client, assert_error_shape

from conftest import TenantKey, ledger_rows, provider_answering
from gateway.models import StoredResponse
from providers.openai import OpenAIProvider
from providers.types import NativeEvent

CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def chunk(choices: Any) -> bytes:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": choices}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


FINISHED = chunk([{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}])


def completion(message: dict[str, Any]) -> dict[str, Any]:
    """A chat completion whose one choice is ``message``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def streamed(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize(
    ("path", "first"),
    [
        ("/v1/chat/completions", chunk(["x"])),  # was an AttributeError in OpenAIProvider.stream
        ("/v1/chat/completions", chunk(True)),  # a TypeError there
        ("/v1/chat/completions", chunk([{"index": 0, "delta": "x"}])),  # in StreamMeter.observe
        (ANTHROPIC_PATH, chunk(True)),  # in OpenAIToAnthropicStream.feed
        (ANTHROPIC_PATH, chunk([{"index": 0, "delta": {"tool_calls": True}}])),
        (ANTHROPIC_PATH, chunk([{"index": 0, "delta": {"tool_calls": [{"index": [0]}]}}])),
    ],
    ids=[
        "choice-text",
        "choices-true",
        "delta-text",
        "to-messages",
        "tool-calls-true",
        "index-list",
    ],
)
async def test_a_stream_chunk_whose_choices_are_not_objects_is_relayed_not_a_500(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str, first: bytes
) -> None:
    """A chunk whose ``choices`` is not a list of objects (or a choice's delta, or a tool
    call's index, not of its type) was read as if it were: a 500 before the first byte, or the
    stream cut by an internal error. Its choices are now read only where they are objects."""
    body = first + FINISHED + b"data: [DONE]\n\n"
    current = gateway_runtime(lambda request: streamed(body))
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    request = {**CHAT, "max_tokens": 10}
    async with api_client() as client:
        answer = await client.post(path, headers=headers, json=request)
    assert answer.status_code == 200, answer.text
    assert "internal_error" not in answer.text and "api_error" not in answer.text, answer.text
    end = b"data: [DONE]" if path == "/v1/chat/completions" else b"event: message_stop"
    assert end in answer.content
    [row] = await sync_to_async(ledger_rows)(current)
    assert row.status_code == 200


def sse(*events: dict[str, Any]) -> bytes:
    """Each event named by its ``type``, as Anthropic's and the Responses API's streams name
    theirs (``?`` when that is not text)."""
    return b"".join(
        b"event: "
        + (event["type"] if isinstance(event.get("type"), str) else "?").encode()
        + b"\ndata: "
        + json.dumps(event).encode()
        + b"\n\n"
        for event in events
    )


async def chat_to_claude(install: Any, key: str, body: bytes) -> tuple[httpx.Response, Any]:
    """A chat stream to the Anthropic model whose upstream streams ``body``: the answer, and
    the call's one ledger row."""
    current = install(lambda request: streamed(body))
    headers = {"authorization": f"Bearer {key}"}
    async with api_client() as client:
        answer = await client.post(
            "/v1/chat/completions", headers=headers, json={**CHAT, "model": "claude-media"}
        )
    [row] = await sync_to_async(ledger_rows)(current)
    return answer, row


async def test_an_event_name_that_is_not_utf8_is_read_not_a_500(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """``iter_sse`` decoded an upstream's event name as UTF-8, strictly: a name that is not
    (here before Anthropic's first event) was a UnicodeDecodeError, answered 500."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
    body = b'event: \xff\xfe\ndata: {"type": "ping"}\n\n' + sse(
        {"type": "message_start", "message": {**message, "usage": {}}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
        {"type": "message_stop"},
    )
    answer, row = await chat_to_claude(gateway_runtime, tenants["alice"].raw, body)
    assert answer.status_code == 200, answer.text
    assert answer.content.endswith(b"data: [DONE]\n\n"), answer.text
    assert row.status_code == 200


def native_events(tmp_path: Path, body: bytes) -> list[NativeEvent]:
    """What ``OpenAIProvider.responses_stream`` makes of an upstream's stream ``body``."""
    provider = provider_answering(tmp_path, lambda request: streamed(body))
    assert isinstance(provider, OpenAIProvider)

    async def events() -> list[NativeEvent]:
        return [event async for event in provider.responses_stream({"input": "hi"}, "m")]

    return async_to_sync(events)()


@pytest.mark.parametrize(
    ("end", "input_tokens"),
    [
        ({"type": "response.completed", "response": "nonsense"}, None),  # was an AttributeError
        ({"type": "response.completed", "response": [1]}, None),
        ({"type": ["not", "a", "name"], "response": {"usage": {"input_tokens": 4}}}, 4),
        ({"type": 7, "response": {"usage": {"input_tokens": 4}}}, 4),
        ({"type": "response.completed", "response": {"usage": {"input_tokens": 4}}}, 4),
    ],
)
def test_a_malformed_native_responses_stream_end_still_ends_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: dict[str, Any], input_tokens: int | None
) -> None:
    """A Responses upstream's last event whose ``response`` is not an object, or whose ``type``
    is not a name, ends the stream as its SSE event says, billed on what usage is readable."""
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    delta = sse({"type": "response.output_text.delta"})
    end_event = b"event: response.completed\ndata: " + json.dumps(end).encode() + b"\n\n"
    events = native_events(tmp_path, delta + end_event)
    assert len(events) == 2
    assert events[-1].raw.startswith(b"event: response.completed\n")
    assert events[-1].usage is not None and events[-1].usage.prompt_tokens == input_tokens


def test_a_native_responses_stream_ends_at_its_first_end_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Responses upstream that went on after ``response.failed`` (here to a
    ``response.completed``) had both passed on: the caller's stream ended completed while the
    ledger recorded the failure. The first end event now ends the stream."""
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    failed = {"type": "response.failed", "response": {"error": {"message": "boom"}}}
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 4}}}
    events = native_events(tmp_path, sse(failed, completed))
    assert [event.raw.split(b"\n", 1)[0] for event in events] == [b"event: response.failed"]


async def test_a_response_announced_twice_is_kept_once(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A native Responses stream that sent ``response.created`` twice had its response kept
    twice: the second was an IntegrityError, logged with its traceback. The first is kept."""
    created = {"type": "response.created", "response": {"id": "resp_twice", "status": "x"}}
    completed = {"type": "response.completed", "response": {"id": "resp_twice", "usage": {}}}
    body = sse(created, created, completed)
    current = gateway_runtime(lambda request: streamed(body), responses=True)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    request = {"model": "gpt-test", "input": "hi", "stream": True, "store": True}
    with caplog.at_level(logging.WARNING):
        async with api_client() as client:
            answer = await client.post("/v1/responses", headers=headers, json=request)
    assert answer.status_code == 200, answer.text
    assert answer.content.count(b"event: response.created") == 2  # passed on as they came
    kept = await sync_to_async(list)(StoredResponse.objects.values_list("id", flat=True))
    assert kept == ["resp_twice"]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    [row] = await sync_to_async(ledger_rows)(current)
    assert row.status_code == 200


async def test_a_completion_whose_tool_calls_are_not_a_list_is_translated_not_a_500(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """``openai_response_to_anthropic`` iterated the message's ``tool_calls`` whatever they
    were: a number (here) was a TypeError, answered 500 on /v1/messages."""
    message = {"role": "assistant", "content": "hi", "tool_calls": 1.5}
    current = gateway_runtime(lambda request: httpx.Response(200, json=completion(message)))
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    body = {**CHAT, "stream": False, "max_tokens": 10}
    async with api_client() as client:
        answer = await client.post(ANTHROPIC_PATH, headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"] == [{"type": "text", "text": "hi"}]
    [row] = await sync_to_async(ledger_rows)(current)
    assert row.status_code == 200


@pytest.mark.parametrize("index", [["x"], {"type": 7}])
async def test_an_anthropic_block_index_that_is_not_a_key_is_ignored_not_a_500(
    tenants: dict[str, TenantKey], gateway_runtime: Any, index: Any
) -> None:
    """``AnthropicToOpenAIStream`` looked a content block's ``index`` up among its tool calls
    whatever it was: a list or an object (unhashable) was a TypeError that cut the chat stream
    and recorded a 500. An index that is not an int names no block of ours."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": []}
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    delta = {"type": "input_json_delta", "partial_json": "{}"}
    body = sse(
        {"type": "message_start", "message": {**message, "usage": {}}},
        {"type": "content_block_start", "index": 0, "content_block": tool},
        {"type": "content_block_delta", "index": index, "delta": delta},
        {"type": "content_block_stop", "index": index},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
        {"type": "message_stop"},
    )
    answer, row = await chat_to_claude(gateway_runtime, tenants["alice"].raw, body)
    assert answer.status_code == 200, answer.text
    assert answer.content.endswith(b"data: [DONE]\n\n"), answer.text
    assert row.status_code == 200


# --- native responses: their ids, and what their upstream answers of them -------------------------


async def keep_native(who: TenantKey, response_id: str) -> None:
    """A response of ``gpt-test``'s upstream, serving the Responses API, kept for ``who``."""
    await StoredResponse.objects.acreate(
        id=response_id, tenant=who.tenant, model="gpt-test", provider="fake", native=True
    )


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("GET", "/input_items"), ("DELETE", "")]
)
@pytest.mark.parametrize("body", [b"null", b"not json"])
async def test_a_stored_response_answered_with_no_json_object_is_a_502_not_relayed(
    tenants: dict[str, TenantKey], gateway_runtime: Any, method: str, suffix: str, body: bytes
) -> None:
    """``GET`` and ``DELETE /v1/responses/{id}`` of a response its upstream keeps relayed that
    upstream's 2xx whatever its body: ``null``, or text, reached the caller as JSON. An answer
    that is not a JSON object is now a 502, and a ``DELETE`` so answered keeps the response."""
    gateway_runtime(lambda request: httpx.Response(200, content=body), responses=True)
    await keep_native(tenants["alice"], "resp_kept")
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    async with api_client() as client:
        answer = await client.request(method, "/v1/responses/resp_kept" + suffix, headers=headers)
    assert answer.status_code == 502, answer.text
    assert_error_shape("/v1/responses", answer)
    assert await StoredResponse.objects.filter(id="resp_kept").aexists()


@pytest.mark.parametrize(
    "response_id",
    ["resp\n1", "resp_\x1b[31m", "resp?x=1", "resp#1", "resp%41"],
    ids=["newline", "escape", "query", "fragment", "percent"],
)
async def test_a_native_response_id_is_asked_for_as_one_path_segment(
    tenants: dict[str, TenantKey], gateway_runtime: Any, response_id: str
) -> None:
    """A native response's id went into its upstream's URL as it was: a control character
    made the URL invalid (a 500, logged with its traceback), and ``?``, ``#`` or ``%41`` had
    the upstream asked for another id (``resp``, ``respA``). The id is now quoted: one path
    segment, whatever it holds."""
    asked: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json={"id": response_id, "object": "response"})

    gateway_runtime(upstream, responses=True)
    await keep_native(tenants["alice"], response_id)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    async with api_client() as client:
        answer = await client.get("/v1/responses/" + quote(response_id, safe=""), headers=headers)
    assert answer.status_code == 200, answer.text
    [request] = asked
    assert (request.url.path, request.url.query) == ("/v1/responses/" + response_id, b"")


NATIVE_RESPONSE = {
    "object": "response",
    "status": "completed",
    "output": [],
    "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
}


async def create_stored(key: str) -> httpx.Response:
    """A Responses call to ``gpt-test``, stored (native when its upstream serves the API)."""
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "gpt-test", "input": "hi", "store": True}
    async with api_client() as client:
        return await client.post("/v1/responses", headers=headers, json=body)


@pytest.mark.parametrize(
    "response_id",
    ["resp_\x00", "resp_" + "a" * 96, "resp/1", ".."],
    ids=["nul", "101-characters", "slash", "dot-segment"],
)
async def test_a_native_response_id_the_gateway_cannot_keep_is_not_stored(
    tenants: dict[str, TenantKey],
    gateway_runtime: Any,
    caplog: pytest.LogCaptureFixture,
    response_id: str,
) -> None:
    """A native response's id was kept whatever it was: with a NUL (PostgreSQL refuses one: a
    DataError, logged with its traceback), cut to its column's 100 characters (found by
    neither id after), with a ``/`` or as a dot segment (no ``/v1/responses/{id}`` reaches
    those). Such an id is now not kept: one warning line, the call answered as any other."""
    response = {**NATIVE_RESPONSE, "id": response_id}
    current = gateway_runtime(lambda request: httpx.Response(200, json=response), responses=True)
    with caplog.at_level(logging.WARNING):
        answer = await create_stored(tenants["alice"].raw)
    assert answer.status_code == 200, answer.text
    assert not await StoredResponse.objects.aexists()
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "was not stored" in warning.getMessage() and warning.exc_info is None
    [row] = await sync_to_async(ledger_rows)(current)
    assert row.status_code == 200


async def test_a_native_response_id_kept_already_is_a_warning_not_a_traceback(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that gave two responses one id (here, to two tenants) had the second's
    insert fail on the key: an IntegrityError, logged with its traceback. It is now one warning
    line, and the first response stays kept."""
    response = {**NATIVE_RESPONSE, "id": "resp_same"}
    current = gateway_runtime(lambda request: httpx.Response(200, json=response), responses=True)
    with caplog.at_level(logging.WARNING):
        answers = [await create_stored(tenants[name].raw) for name in ("alice", "bob")]
    assert [answer.status_code for answer in answers] == [200, 200]
    kept = await sync_to_async(list)(StoredResponse.objects.values_list("id", "tenant_id"))
    assert kept == [("resp_same", tenants["alice"].tenant.id)]
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "already kept" in warning.getMessage() and warning.exc_info is None
    rows = await sync_to_async(ledger_rows)(current)
    assert [row.status_code for row in rows] == [200, 200]


async def test_a_bridged_response_with_a_nul_is_kept_the_nul_replaced_on_postgresql(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A bridged response whose text holds a NUL (here the upstream's answer) is refused by
    PostgreSQL's JSON (a DataError), which was logged with its traceback and the response not
    kept: a later ``previous_response_id`` naming it got a 400. The NUL is now replaced by
    U+FFFD there, as in the ledger's rows, and the response kept (SQLite keeps it as it is)."""
    message = {"role": "assistant", "content": "hi\x00"}
    current = gateway_runtime(lambda request: httpx.Response(200, json=completion(message)))
    with caplog.at_level(logging.WARNING):
        answer = await create_stored(tenants["alice"].raw)
    assert answer.status_code == 200, answer.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    stored = await StoredResponse.objects.aget(id=answer.json()["id"])
    [item] = stored.body["output"]
    assert item["content"][0]["text"] in ("hi\x00", "hi\ufffd")
    [row] = await sync_to_async(ledger_rows)(current)
    assert row.status_code == 200
