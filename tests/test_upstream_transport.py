"""``providers.http.UpstreamTransport`` over the wire: an answer read whole (``READ_WHOLE``, every
JSON answer) is the answer a stream would have given, its connection goes back to the pool, and
its failures are the ones a streamed read reports."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from providers.errors import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from providers.http import (
    READ_WHOLE,
    UpstreamClient,
    UpstreamTransport,
    post_for_json,
    post_json,
    read_json_object,
)

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers each request with the next of ``answers``
    (written byte by byte as the test says), and counts the connections it accepted."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                await self.answers.pop(0)(writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def answer(status: int, body: bytes, *headers: str, declared: int | None = None) -> Answer:
    """A whole answer; ``declared``, a Content-Length other than the body's (a cut answer, which
    then closes the connection)."""

    async def write(writer: asyncio.StreamWriter) -> None:
        length = len(body) if declared is None else declared
        head = [f"HTTP/1.1 {status} X", f"content-length: {length}", *headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        if declared is not None:
            writer.close()

    return write


def stalled(body: bytes, seconds: float) -> Answer:
    """The headers at once, the body ``seconds`` later."""

    async def write(writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(seconds)
        writer.write(body)
        await writer.drain()

    return write


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(
        transport=UpstreamTransport(limits=httpx.Limits(max_connections=10)),
        timeout=httpx.Timeout(5, read=0.5),
    )
    yield client
    await client.aclose()


async def _send(client: UpstreamClient, url: str, whole: bool) -> tuple[int, bytes, Any]:
    request = client.upstream(
        "POST", httpx.URL(url), {"content-type": "application/json"}, b"{}", whole=whole
    )
    response = await client.send_upstream(request)
    if whole:
        assert response.content  # read by the transport: no ``ResponseNotRead``
    try:
        return response.status_code, await response.aread(), response.headers
    finally:
        await response.aclose()


async def test_an_answer_read_whole_is_the_answer_a_stream_gives(client: UpstreamClient) -> None:
    body = orjson.dumps({"choices": [], "text": "é" * 5000})
    packed = gzip.compress(body)
    answers = [
        answer(200, body, "content-type: application/json", "x-request-id: up-1"),
        answer(200, packed, "content-type: application/json", "content-encoding: gzip"),
    ]
    async with RawUpstream(answers * 2) as base:
        streamed = [await _send(client, base, whole=False) for _ in range(2)]
        read_whole = [await _send(client, base, whole=True) for _ in range(2)]
    for (status, content, headers), (status2, content2, headers2) in zip(
        streamed, read_whole, strict=True
    ):
        assert (status, content, headers.multi_items()) == (
            status2,
            content2,
            headers2.multi_items(),
        )
    assert read_whole[0][1] == body
    assert read_whole[1][1] == body  # decoded, as httpx decodes
    assert read_whole[0][2]["x-request-id"] == "up-1"


async def test_a_request_read_whole_says_so_and_is_otherwise_the_same() -> None:
    client = UpstreamClient()
    url = httpx.URL("http://127.0.0.1:1/v1/chat/completions")
    whole = client.upstream("POST", url, {"a": "1"}, b"{}", whole=True)
    streamed = client.upstream("POST", url, {"a": "1"}, b"{}")
    assert whole.extensions == {**streamed.extensions, READ_WHOLE: True}
    assert READ_WHOLE not in streamed.extensions
    assert whole.headers.raw == streamed.headers.raw


async def test_an_answer_read_whole_gives_its_connection_back(client: UpstreamClient) -> None:
    upstream = RawUpstream([answer(200, b'{"choices": []}') for _ in range(5)])
    async with upstream as base:
        for _ in range(5):
            assert (await _send(client, base, whole=True))[0] == 200
    assert upstream.connections == 1


async def test_an_answer_cut_short_is_an_unreachable_upstream_and_the_next_call_works(
    client: UpstreamClient,
) -> None:
    upstream = RawUpstream([answer(200, b'{"choi', declared=100), answer(200, b'{"choices": [1]}')])

    async def ask(base: str) -> bytes:
        raw, _ = await post_for_json(
            client, "fake", httpx.URL(base), {}, {}, lambda data: "choices" in data, "an answer"
        )
        return raw

    async with upstream as base:
        with pytest.raises(UpstreamUnavailable):
            await ask(base)
        assert await ask(base) == b'{"choices": [1]}'
    assert upstream.connections == 2  # the cut one was not reused


async def test_an_answer_whose_body_stalls_is_a_timeout(client: UpstreamClient) -> None:
    async with RawUpstream([stalled(b'{"choices": []}', 2.0)]) as base:
        with pytest.raises(UpstreamTimeout):
            await post_for_json(
                client, "fake", httpx.URL(base), {}, {}, lambda data: True, "an answer"
            )


async def test_a_refusal_read_whole_passes_the_upstreams_message_on(
    client: UpstreamClient,
) -> None:
    error = {"error": {"message": "max_tokens is too large", "param": "max_tokens"}}
    async with RawUpstream([answer(400, orjson.dumps(error))]) as base:
        with pytest.raises(UpstreamRejected) as raised:
            await post_for_json(
                client, "fake", httpx.URL(base), {}, {}, lambda data: True, "an answer"
            )
    assert raised.value.message == "max_tokens is too large"
    assert raised.value.param == "max_tokens"


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"application/json"), (b"Authorization", b"Bearer k")],
        [(b"X-Custom", b"1"), (b"x-custom", b"2"), (b"Accept", b"*/*")],
        [(b"X-Name", "Zoë".encode()), (b"X-Other", b"plain")],
        [(b"X-Latin", "café".encode("latin-1"))],
    ],
)
def test_headers_go_to_aiohttp_as_httpx_gives_them(raw: list[tuple[bytes, bytes]]) -> None:
    from providers.http import _aiohttp_headers

    headers = httpx.Headers(raw)
    assert _aiohttp_headers(headers) == list(headers.items())


@pytest.mark.parametrize("whole", [True, False])
async def test_an_answer_whose_compression_is_broken_is_an_unreachable_upstream(
    client: UpstreamClient, whole: bool
) -> None:
    """A 502 in the API's shape, read whole or streamed: not the 500 of a gateway bug."""
    broken = answer(200, b"\x1f\x8b\x08\x00not gzip at all", "content-encoding: gzip")
    async with RawUpstream([broken]) as base:
        with pytest.raises(UpstreamUnavailable, match="could not be decoded"):
            if whole:
                await post_for_json(
                    client, "fake", httpx.URL(base), {}, {}, lambda data: True, "an answer"
                )
            else:
                async with post_json(client, "fake", httpx.URL(base), {}, {}) as response:
                    await read_json_object(response, "fake", lambda data: True, "an answer")
