"""What the in-process media tests share: django.test's AsyncClient (the ``client`` fixture: a
test module imports ``client_fixture``), a fake upstream at the HTTP boundary, calls in JSON or as a
multipart form, a WAV file, and the ledger rows of a runtime."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from conftest import TenantKey, ledger_rows
from gateway.models import UsageRecord
from gateway.runtime import Runtime

Handler = Callable[[httpx.Request], Any]


@pytest.fixture(name="client")
def client_fixture() -> AsyncClient:
    return AsyncClient()


class Upstream:
    """A fake upstream at the HTTP boundary: answers by path, remembers what it was sent."""

    def __init__(self, answers: dict[str, Handler]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[request.url.path](request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return answer

    def json(self, index: int = -1) -> Any:
        return orjson.loads(self.requests[index].content)


def json_answer(body: object, status: int = 200) -> Handler:
    return lambda request: httpx.Response(status, content=orjson.dumps(body))


async def rows(current: Runtime) -> list[UsageRecord]:
    return await sync_to_async(ledger_rows)(current)


async def post(
    client: AsyncClient, path: str, who: TenantKey, body: object
) -> Any:  # django.test's response
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(
        "/v1/" + path, content, content_type="application/json", headers=who.headers
    )


async def post_form(
    client: AsyncClient, who: TenantKey, fields: dict[str, Any], file: bytes | None = None
) -> Any:
    data = dict(fields)
    if file is not None:
        data["file"] = _Upload("speech.wav", file)
    return await client.post("/v1/audio/transcriptions", data, headers=who.headers)


class _Upload:
    """A file for django.test's multipart encoder (it reads ``name`` and ``read()``)."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data

    def read(self) -> bytes:
        return self.data


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent 16-bit mono PCM WAV of ``seconds``."""
    data = b"\0\0" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    body = b"WAVE" + chunks + data
    return b"RIFF" + struct.pack("<I", len(body)) + body
