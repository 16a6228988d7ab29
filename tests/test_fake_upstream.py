"""Quick checks of the fake upstream (tests/fake_upstream.py), run as a real subprocess."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from fake_media import EMBEDDING_TOKENS, PNG_1X1, SPEECH_AUDIO, TRANSCRIPT
from fake_upstream import (
    REASONING_TEXT,
    run_fake_upstream,
)  # tests/ has no __init__.py: pytest puts it on sys.path

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 5,
    "total_tokens": 16,
    "prompt_tokens_details": {"cached_tokens": 3},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_fake_upstream(slow_seconds=0.3) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def anthropic_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        events.append((name[7:], json.loads(data[6:])))
    return events


def test_ready_line_and_models(base_url: str, client: httpx.Client) -> None:
    assert urlsplit(base_url).hostname == "127.0.0.1"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and len(models["data"]) >= 2
    missing = client.post("/nope", json={})
    assert missing.status_code == 404 and "error" in missing.json()
    for bad in (b"", b"{not json", b"[1]"):
        assert client.post(OPENAI, content=bad).status_code == 400
    assert client.post(ANTHROPIC, content=b"").json()["type"] == "error"


def test_openai_non_streaming_keep_alive(client: httpx.Client) -> None:
    for _ in range(3):  # several requests on one pooled connection
        r = client.post(OPENAI, json={"model": "gpt-x", "messages": []})
        assert r.status_code == 200
        body = r.json()
        assert body["model"] == "gpt-x" and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"] == USAGE
    assert len(client._transport._pool.connections) == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("include_usage", [False, True])
def test_openai_streaming(client: httpx.Client, include_usage: bool) -> None:
    payload: dict[str, Any] = {"model": "m1", "stream": True}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    r = client.post(OPENAI, json=payload)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["transfer-encoding"] == "chunked"
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 1 + 5 + 1 + include_usage
    assert {(c["id"], c["model"], c["created"], c["object"]) for c in chunks} == {
        ("chatcmpl-fake", "m1", chunks[0]["created"], "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:6]] == [
        f"tok{i} " for i in range(5)
    ]
    assert chunks[6]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:6])
    if include_usage:
        assert chunks[7]["choices"] == [] and chunks[7]["usage"] == USAGE
        assert all(c["usage"] is None for c in chunks[:7])
    else:
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_reasoning_model_reasons_before_its_text(client: httpx.Client, stream: bool) -> None:
    r = client.post(OPENAI, json={"model": "reasoning", "stream": stream})
    assert r.status_code == 200
    if not stream:
        message = r.json()["choices"][0]["message"]
        assert message["reasoning_content"] == REASONING_TEXT
        assert message["content"] == "tok0 tok1 tok2 tok3 tok4 "
        return
    deltas = [json.loads(d)["choices"][0]["delta"] for d in sse_data(r.text)[1:-2]]
    assert "".join(d["reasoning_content"] for d in deltas[:2]) == REASONING_TEXT
    assert [d["content"] for d in deltas[2:]] == [f"tok{i} " for i in range(5)]


def test_echo_with_chunked_request_body(client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:  # a generator body makes httpx send Transfer-Encoding: chunked
        yield b'{"model": "echo", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    r = client.post(OPENAI, content=body(), headers={"X-Custom": "Yes"})
    echoed = json.loads(r.json()["choices"][0]["message"]["content"])
    assert echoed["body"] == {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    assert echoed["headers"]["x-custom"] == "Yes"
    assert echoed["headers"]["transfer-encoding"] == "chunked"
    streamed = sse_data(client.post(OPENAI, json={"model": "echo", "stream": True}).text)
    content = json.loads(streamed[1])["choices"][0]["delta"]["content"]
    assert json.loads(content)["body"] == {"model": "echo", "stream": True}


@pytest.mark.parametrize(
    ("model", "status", "anthropic_type"),
    [
        ("fail-500", 500, "api_error"),
        ("fail-429", 429, "rate_limit_error"),
        ("fail-400", 400, "invalid_request_error"),
        ("fail-401", 401, "authentication_error"),
    ],
)
def test_failures(client: httpx.Client, model: str, status: int, anthropic_type: str) -> None:
    oa = client.post(OPENAI, json={"model": model})
    an = client.post(ANTHROPIC, json={"model": model, "stream": True})
    assert oa.status_code == an.status_code == status
    assert set(oa.json()["error"]) == {"message", "type", "param", "code"}
    assert an.json()["error"]["type"] == anthropic_type and "request-id" in an.headers
    if status == 429:
        assert oa.headers["retry-after"] == an.headers["retry-after"] == "1"
        assert oa.json()["error"]["code"] == "rate_limit_exceeded"
    if status == 401:
        assert "Incorrect API key provided: sk-fake***" in oa.json()["error"]["message"]
    if status == 400:
        assert oa.json()["error"]["param"] == "messages"


def test_overloaded_garbage_and_slow(client: httpx.Client) -> None:
    r = client.post(ANTHROPIC, json={"model": "overloaded"})
    assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    r = client.post(OPENAI, json={"model": "garbage"})
    assert (r.status_code, r.text, r.headers["content-type"]) == (
        200,
        "not json",
        "application/json",
    )
    started = time.monotonic()
    assert client.post(OPENAI, json={"model": "slow"}).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_mid_stream(client: httpx.Client) -> None:
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", OPENAI, json={"model": "drop-mid-stream", "stream": True}) as r,
    ):
        received.extend(r.iter_lines())
    assert sum(line.startswith("data: ") for line in received) == 3
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(ANTHROPIC, json={"model": "drop-mid-stream"})
    assert client.post(OPENAI, json={"model": "after"}).status_code == 200


def test_client_disconnect_and_connection_close(base_url: str, client: httpx.Client) -> None:
    with client.stream("POST", OPENAI, json={"model": "slow-stream", "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # then hang up mid-stream
    r = client.post(OPENAI, json={"model": "x"}, headers={"Connection": "close"})
    assert r.status_code == 200 and r.headers["connection"] == "close"
    # raw socket: two pipelined requests, the second asking to close
    url = urlsplit(base_url)
    body = b'{"model": "p"}'
    request = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % (
        OPENAI.encode(),
        len(body),
    )
    with socket.create_connection((url.hostname, url.port), timeout=5) as s:
        s.sendall(request + b"\r\n" + body + request + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert client.get("/v1/models").status_code == 200  # still serving


def test_anthropic_messages(client: httpx.Client) -> None:
    r = client.post(ANTHROPIC, json={"model": "claude-x", "max_tokens": 5})
    assert r.headers["request-id"]
    assert r.json() == {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "tok0 tok1 tok2 tok3 tok4 "}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "output_tokens": 5,
            "cache_creation_input_tokens": 4,
            "cache_read_input_tokens": 3,
        },
    }
    tool = client.post(ANTHROPIC, json={"model": "tool-use"}).json()
    assert tool["stop_reason"] == "tool_use"
    assert tool["content"][1] == {
        "type": "tool_use",
        "id": "toolu_fake1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    echo = client.post(ANTHROPIC, json={"model": "echo"}).json()
    assert json.loads(echo["content"][0]["text"])["body"] == {"model": "echo"}


def test_anthropic_streaming(client: httpx.Client) -> None:
    r = client.post(ANTHROPIC, json={"model": "claude-x", "stream": True})
    events = anthropic_events(r.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    assert events[0][1]["message"]["usage"] == {
        "input_tokens": 11,
        "output_tokens": 1,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 3,
    }
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == (
        "tok0 tok1 tok2 tok3 tok4 "
    )
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"output_tokens": 5}

    tool = anthropic_events(client.post(ANTHROPIC, json={"model": "tool-use", "stream": True}).text)
    fragments = [
        d["delta"]["partial_json"]
        for _, d in tool
        if d.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert fragments == ['{"city": ', '"Paris"}']
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert tool[-2][1]["delta"]["stop_reason"] == "tool_use"

    failing = anthropic_events(
        client.post(ANTHROPIC, json={"model": "stream-error", "stream": True}).text
    )
    assert [n for n, _ in failing][-3:] == ["content_block_delta", "content_block_delta", "error"]
    assert failing[-1][1]["error"]["type"] == "overloaded_error"


# --- embeddings, images, speech, transcriptions (tests/fake_media.py) --------------------------


def test_embeddings_float_and_base64(client: httpx.Client) -> None:
    body = {"model": "e", "input": ["a", "b"], "dimensions": 3}
    floats = client.post("/v1/embeddings", json=body).json()
    assert [item["embedding"] for item in floats["data"]] == [[1, 1.25, 1.5], [2, 2.25, 2.5]]
    assert floats["usage"] == {"prompt_tokens": 2 * EMBEDDING_TOKENS, "total_tokens": 12}
    encoded = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    vectors = [struct.unpack("<3f", base64.b64decode(d["embedding"])) for d in encoded["data"]]
    assert vectors == [(1, 1.25, 1.5), (2, 2.25, 2.5)]
    tokens = client.post("/v1/embeddings", json={"model": "e", "input": [1, 2, 3]}).json()
    assert len(tokens["data"]) == 1 and len(tokens["data"][0]["embedding"]) == 4


def test_images(client: httpx.Client) -> None:
    dalle = client.post("/v1/images/generations", json={"model": "d", "prompt": "x", "n": 2})
    assert dalle.json() == {"created": 1700000000, "data": [{"b64_json": PNG_1X1}] * 2}
    gpt = client.post("/v1/images/generations", json={"model": "gpt-image-x", "prompt": "x"})
    assert (gpt.json()["size"], gpt.json()["quality"]) == ("1024x1024", "medium")
    assert gpt.json()["usage"]["output_tokens"] == 1056


def test_speech_is_chunked_audio(client: httpx.Client) -> None:
    body = {"model": "tts", "input": "hi", "voice": "alloy"}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.headers["content-type"] == "audio/mpeg"
        assert r.headers["transfer-encoding"] == "chunked"
        assert b"".join(r.iter_raw()) == b"".join(SPEECH_AUDIO)
    wav = client.post("/v1/audio/speech", json={**body, "response_format": "wav"})
    assert wav.headers["content-type"] == "audio/wav"
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/audio/speech", json={**body, "model": "drop-mid-stream"}) as r,
    ):
        r.read()


def test_transcriptions_parse_the_form(client: httpx.Client) -> None:
    files = {"file": ("a.wav", b"RIFF1234", "audio/wav")}
    r = client.post("/v1/audio/transcriptions", data={"model": "w"}, files=files)
    assert r.json() == {"text": TRANSCRIPT, "usage": {"type": "duration", "seconds": 7}}
    text = client.post(
        "/v1/audio/transcriptions", data={"model": "w", "response_format": "srt"}, files=files
    )
    assert (text.text, text.headers["content-type"]) == (
        TRANSCRIPT + "\n",
        "text/plain; charset=utf-8",
    )
    echo = client.post(
        "/v1/audio/transcriptions", data={"model": "echo", "x[]": ["1", "2"]}, files=files
    )
    assert json.loads(echo.json()["text"])["body"] == {
        "model": "echo",
        "x[]": ["1", "2"],
        "file": {"filename": "a.wav", "content_type": "audio/wav", "size": 8},
    }
    missing = client.post("/v1/audio/transcriptions", data={"model": "w"}, files={"other": b"x"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert client.post("/v1/audio/transcriptions", json={"model": "w"}).status_code == 400


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/images/generations", "/v1/audio/speech"])
def test_media_failures(client: httpx.Client, path: str) -> None:
    assert client.post(path, json={"model": "fail-500"}).status_code == 500
    assert client.post(path, json={"model": "fail-429"}).headers["retry-after"] == "1"
    assert client.post(path, json={"model": "garbage"}).text == "not json"
    assert client.post(path, content=b"nope").status_code == 400
