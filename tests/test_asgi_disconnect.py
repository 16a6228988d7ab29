"""A client that leaves between the view's answer and its first byte still leaves a ledger row."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from asgiref.sync import sync_to_async

from bench.inprocess import post_scope
from conftest import TenantKey, ledger_rows
from gateway.api.handler import api_application

CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
}


async def test_disconnect_before_the_stream_is_read_is_recorded(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    # Regression: the relay that writes a stream's row never ran when the client went away while
    # the response headers were being sent, so the call left no row and the upstream stayed open.
    async def upstream_body() -> Any:
        yield b"data: " + orjson.dumps(CHUNK) + b"\n\n"
        await asyncio.sleep(30)  # the upstream would go on: the gateway must close it

    current = gateway_runtime(lambda request: httpx.Response(200, content=upstream_body()))
    body = orjson.dumps(
        {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    )
    left = asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            left.set()  # the client goes away as the headers go out...
            await asyncio.sleep(30)  # ...and the send never completes

    scope = post_scope(
        "/v1/chat/completions",
        [
            (b"authorization", f"Bearer {tenants['alice'].raw}".encode()),
            (b"content-type", b"application/json"),
        ],
    )
    await asyncio.wait_for(api_application(scope, receive, send), timeout=10)

    rows = await sync_to_async(ledger_rows)(current)
    assert [(r.status_code, r.error_type, r.stream) for r in rows] == [
        (499, "client_disconnected", True)
    ]
