"""The lean handler's shortcuts answer as Django would: its kept URL resolutions
(``ApiHandler.resolve_request``) and its calls straight to their view (``answer_call``), against
Django's own handler and ninja's view."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from support.inprocess import ANTHROPIC_PATH, answer_everything, api_client, assert_error_shape

from bench.inprocess import post_scope
from conftest import TenantKey, ledger_rows
from gateway.api import routes
from gateway.api.handler import api_application
from gateway.tenants import auth


@pytest.fixture
def headers(tenants: dict[str, TenantKey], gateway_runtime: Any) -> dict[str, str]:
    """Alice's key as Bearer, and an upstream that answers everything."""
    gateway_runtime(answer_everything)
    return {"authorization": f"Bearer {tenants['alice'].raw}"}


async def test_a_path_with_parameters_is_resolved_each_time_with_its_own(
    headers: dict[str, str],
) -> None:
    async with api_client() as client:
        first = await client.get("/v1/models/echo", headers=headers)
        second = await client.get("/v1/models/no-such-model", headers=headers)
        again = await client.get("/v1/models/echo", headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"] == "echo"
    assert second.status_code == 404
    assert "no-such-model" in second.json()["error"]["message"]
    assert not any(path.startswith("/v1/models/") for path in api_application._static_routes)


async def test_a_kept_path_still_answers_each_method_and_unknown_paths_stay_404(
    headers: dict[str, str],
) -> None:
    async with api_client() as client:
        listed = await client.get("/v1/models", headers=headers)
        assert "/v1/models" in api_application._static_routes
        posted = await client.post("/v1/models", headers=headers, json={})
        listed_again = await client.get("/v1/models", headers=headers)
        unknown = [await client.get("/v1/nowhere", headers=headers) for _ in range(2)]
    assert listed.status_code == listed_again.status_code == 200
    assert listed.json() == listed_again.json()
    assert posted.status_code == 405
    assert_error_shape("/v1/models", posted)
    assert [r.status_code for r in unknown] == [404, 404]
    assert "/v1/nowhere" not in api_application._static_routes


async def _both_ways(path: str, headers: dict[str, str], body: dict[str, Any]) -> list[Any]:
    """The same call through the lean handler (``ApiHandler.answer_call``) and through Django's
    own handler and ninja's view (Django's test client): status, body and headers the API sets."""
    async with api_client() as client:
        direct = await client.post(path, json=body, headers=headers)
    through_ninja = await AsyncClient().post(
        path, body, content_type="application/json", headers=headers
    )
    answers = []
    for response in (direct, through_ninja):
        content = response.content
        answers.append(
            (
                response.status_code,
                orjson.loads(content) if content else None,
                sorted(
                    name
                    for name in response.headers
                    if name.startswith(("x-tollgate-", "x-ratelimit-")) or name == "request-id"
                ),
            )
        )
    return answers


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "key_header"),
    [
        ("/v1/chat/completions", CHAT, "authorization"),
        (ANTHROPIC_PATH, MESSAGE, "x-api-key"),
        ("/v1/embeddings", {"model": "echo", "input": "hi"}, "authorization"),
    ],
)
async def test_a_call_answers_alike_through_the_lean_handler_and_ninjas_view(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str, body: Any, key_header: str
) -> None:
    current = gateway_runtime(answer_everything)
    raw = tenants["alice"].raw
    key = {key_header: f"Bearer {raw}" if key_header == "authorization" else raw}
    good, good_again = await _both_ways(path, key, body)
    assert good[0] == 200 and good[:1] + good[2:] == good_again[:1] + good_again[2:]
    refused, refused_again = await _both_ways(path, {key_header: "Bearer tg-wrong"}, body)
    assert refused == refused_again and refused[0] == 401
    rows = await sync_to_async(ledger_rows)(current)
    assert [r.status_code for r in rows] == [200, 200]  # a refused key makes no call


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), (ANTHROPIC_PATH, MESSAGE)]
)
async def test_a_rate_limited_caller_gets_its_headers_through_either_handler(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str, body: Any
) -> None:
    """The lean handler sends the policy's headers beside Django's response; through Django's
    own handler (its test clients) they are the response's headers: the same either way."""
    alice = tenants["alice"]
    alice.tenant.rpm_limit, alice.tenant.tpm_limit = 100, 100_000
    await sync_to_async(alice.tenant.save)()
    auth._key_cache.clear()
    gateway_runtime(answer_everything)
    direct, through_ninja = await _both_ways(path, {"x-api-key": alice.raw}, body)
    assert direct[0] == through_ninja[0] == 200
    assert direct[2] == through_ninja[2]
    assert {f"x-ratelimit-{name}" for name in ("limit-requests", "limit-tokens")} <= set(direct[2])


async def test_a_bug_under_a_call_is_a_500_in_the_apis_shape_either_way(
    headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "serve", broken)
    direct, through_ninja = await _both_ways("/v1/chat/completions", headers, CHAT)
    assert direct == through_ninja
    assert direct[0] == 500
    assert direct[1]["error"]["message"] == "The gateway failed to handle the request."


async def test_a_server_whose_requests_are_not_plain_asyncio_tasks_is_served_too(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """granian's --task-impl rust runs each request in a Task subclass that takes no callbacks
    (every call answered 500 until the handler ran such a request in a task of its own)."""

    class ServerTask(asyncio.Task):  # type: ignore[type-arg]
        def add_done_callback(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("uninitialized Future object")  # as granian's

    current = gateway_runtime(answer_everything)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}

    ended = asyncio.Event()  # awaiting the task would add a callback, which it refuses

    async def call() -> int:
        try:
            async with api_client() as client:
                response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            return response.status_code
        finally:
            ended.set()

    served = ServerTask(call(), loop=asyncio.get_running_loop())
    await ended.wait()
    assert served.done() and served.result() == 200
    rows = await sync_to_async(ledger_rows)(current)
    assert [r.status_code for r in rows] == [200]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (CHAT, 200),
        ({**CHAT, "stream": True}, 200),
        ({**CHAT, "model": "no-such-model"}, 404),
    ],
)
async def test_the_observers_learn_of_a_call_after_its_answer_is_sent(
    tenants: dict[str, TenantKey], gateway_runtime: Any, body: dict[str, Any], status: int
) -> None:
    """Metrics, the request log and traces watch a call; the client need not wait for them. The
    ledger row is queued before the answer (it must outlive a crash); the observers are told
    once the answer's last byte is sent, once each, and through ninja's view (no handler to
    tell them later) at once."""
    current = gateway_runtime(answer_everything)
    events: list[str] = []

    class Watcher:
        def call_finished(self, call: Any, row: dict[str, Any]) -> None:
            events.append(f"observer {row['status_code']}")

    current.observers = (Watcher(),)
    payload = orjson.dumps(body)
    scope = post_scope(
        "/v1/chat/completions",
        [
            (b"authorization", f"Bearer {tenants['alice'].raw}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ],
    )
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not events:
            events.append("request")
            return {"type": "http.request", "body": payload, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            events.append(f"answer {message['status']}")
        elif not message.get("more_body", False):
            events.append("answer ended")
            answered.set()

    await api_application(scope, receive, send)
    assert events == ["request", f"answer {status}", "answer ended", f"observer {status}"]

    events.clear()
    response = await AsyncClient().post(
        "/v1/chat/completions",
        body,
        content_type="application/json",
        headers={"authorization": f"Bearer {tenants['alice'].raw}"},
    )
    assert response.status_code == status
    if response.streaming:
        assert events == []  # the stream is recorded as it is read
        assert b"[DONE]" in b"".join([chunk async for chunk in response.streaming_content])
    assert events == [f"observer {status}"]


async def test_every_answer_but_a_stream_says_its_length(headers: dict[str, str]) -> None:
    """Django's CommonMiddleware gives the admin's answers a Content-Length; the API's chain
    leaves it out, and without one the server frames a whole answer in chunks (and an HTTP/1.0
    client cannot keep its connection). Every answer that is not a stream carries its own:
    a call's, the model list, a refusal before Django (a wrong key, a header too large), a
    method Django refuses."""
    big = {**headers, "x-padding": "x" * 70_000}
    async with api_client() as client:
        answers = [
            await client.post("/v1/chat/completions", headers=headers, json=CHAT),
            await client.get("/v1/models", headers=headers),
            await client.post("/v1/chat/completions", headers={"authorization": "Bearer tg-no"}),
            await client.post("/v1/chat/completions", headers=big, json=CHAT),
            await client.get("/v1/chat/completions", headers=headers),
        ]
        async with client.stream(
            "POST", "/v1/chat/completions", headers=headers, json={**CHAT, "stream": True}
        ) as stream:
            streamed = b"".join([chunk async for chunk in stream.aiter_raw()])
            stream_headers = stream.headers
    assert [a.status_code for a in answers] == [200, 200, 401, 431, 405]
    for answer in answers:
        assert answer.headers["content-length"] == str(len(answer.content)), answer.request.url
        assert "transfer-encoding" not in answer.headers
    assert streamed.endswith(b"data: [DONE]\n\n")
    assert "content-length" not in stream_headers


async def test_a_rate_limited_callers_headers_go_out_once_with_every_answer(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """The policy's x-ratelimit-* headers are sent by the handler itself (not set on Django's
    response): each once, with a whole answer and with a stream, beside the answer's own."""
    alice = tenants["alice"]
    alice.tenant.rpm_limit, alice.tenant.tpm_limit = 100, 100_000
    await sync_to_async(alice.tenant.save)()
    auth._key_cache.clear()
    gateway_runtime(answer_everything)
    headers = {"authorization": f"Bearer {alice.raw}"}
    async with api_client() as client:
        whole = await client.post("/v1/chat/completions", headers=headers, json=CHAT)
        async with client.stream(
            "POST", "/v1/chat/completions", headers=headers, json={**CHAT, "stream": True}
        ) as stream:
            await stream.aread()
    for answer, requests_left in ((whole, "99"), (stream, "98")):
        assert answer.status_code == 200
        for name in ("limit-requests", "remaining-requests", "reset-requests", "limit-tokens"):
            assert len(answer.headers.get_list(f"x-ratelimit-{name}")) == 1, (name, answer)
        assert answer.headers["x-ratelimit-limit-requests"] == "100"
        assert answer.headers["x-ratelimit-remaining-requests"] == requests_left
        assert answer.headers["x-request-id"].startswith("req_")
        assert answer.headers["content-type"].startswith(
            "application/json" if answer is whole else "text/event-stream"
        )
    assert whole.headers["content-length"] == str(len(whole.content))
