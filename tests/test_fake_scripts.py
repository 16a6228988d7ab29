"""The fake upstream's scripts (tests/fake_upstream.py, "Scripts"), over real HTTP against running
instances: two named ones shared by the module (reset before each test), and a few started with
command-line flags."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from support.fake import reset, script, stats

from fake_media import SPEECH_AUDIO
from fake_upstream import run_fake_upstream

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
# status: Anthropic error type (OpenAI: "invalid_request_error" for 4xx, but 429; else as listed)
ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    403: ("invalid_request_error", "permission_error"),
    404: ("invalid_request_error", "not_found_error"),
    408: ("invalid_request_error", "invalid_request_error"),
    409: ("invalid_request_error", "conflict_error"),
    422: ("invalid_request_error", "invalid_request_error"),
    429: ("requests", "rate_limit_error"),
    500: ("server_error", "api_error"),
    502: ("server_error", "api_error"),
    503: ("server_error", "api_error"),
    504: ("server_error", "timeout_error"),
    529: ("overloaded_error", "overloaded_error"),
}


@pytest.fixture(scope="module")
def instances() -> Iterator[tuple[str, str]]:
    with (
        run_fake_upstream(name="dep-a", stream_chunks=5) as a,
        run_fake_upstream(name="dep-b") as b,
    ):
        yield a, b


@pytest.fixture
def url(instances: tuple[str, str]) -> str:
    """dep-a, reset: no script, no stats, an empty prompt cache; dep-b too."""
    for base_url in instances:
        reset(base_url)
    return instances[0]


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as c:
        yield c


def sse_lines(response: httpx.Response) -> Iterator[tuple[float, str]]:
    """The stream's ``data:``/``event:`` lines with the time each arrived."""
    for line in response.iter_lines():
        if line:
            yield time.monotonic(), line


def content_of(line: str) -> str | None:
    """An OpenAI chunk's content delta (None: another event)."""
    if not line.startswith("data: {"):
        return None
    choices = json.loads(line[6:])["choices"]
    return choices[0]["delta"].get("content") or None if choices else None


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(ERROR_TYPES))
def test_fail_next_then_success(url: str, client: httpx.Client, status: int) -> None:
    openai_type, anthropic_type = ERROR_TYPES[status]
    script(url, fail_next=2, status=status)
    first = client.post(OPENAI, json=CHAT)
    second = client.post(ANTHROPIC, json={**MESSAGES, "stream": True})
    assert first.status_code == second.status_code == status
    assert set(first.json()["error"]) == {"message", "type", "param", "code"}
    assert first.json()["error"]["type"] == openai_type
    assert first.headers["x-request-id"] and second.headers["request-id"]
    assert second.json() == {
        "type": "error",
        "error": {"type": anthropic_type, "message": second.json()["error"]["message"]},
    }
    assert "retry-after" not in first.headers and "retry-after-ms" not in first.headers
    assert client.post(OPENAI, json=CHAT).status_code == 200  # the two failures are spent
    assert client.post(ANTHROPIC, json=MESSAGES).status_code == 200
    assert [r["status"] for r in stats(url)["requests"]] == [status, status, 200, 200]


def test_fail_next_covers_media_and_whatever_the_body(url: str, client: httpx.Client) -> None:
    script(url, fail_next=3, status=503)
    assert client.get("/v1/models").status_code == 200  # not scripted, nothing spent
    embeddings = client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    assert embeddings.status_code == 503 and embeddings.json()["error"]["type"] == "server_error"
    assert client.post(OPENAI, content=b"not json").status_code == 503
    assert client.post("/v1/audio/speech", json={"model": "tts", "input": "x"}).status_code == 503
    assert client.post("/v1/embeddings", json={"model": "e", "input": "x"}).status_code == 200


def test_retry_after_headers(url: str, client: httpx.Client) -> None:
    script(url, fail_next=1, status=429, retry_after="2")
    r = client.post(OPENAI, json=CHAT)
    assert (r.status_code, r.headers["retry-after"]) == (429, "2")
    assert "retry-after-ms" not in r.headers
    assert r.json()["error"]["code"] == "rate_limit_exceeded"

    script(url, fail_next=1, status=529, retry_after_ms="150")
    r = client.post(ANTHROPIC, json=MESSAGES)
    assert (r.status_code, r.headers["retry-after-ms"]) == (529, "150")
    assert "retry-after" not in r.headers
    assert r.json()["error"]["type"] == "overloaded_error"

    script(url, fail_next=1, status=503, retry_after=1, retry_after_ms=1000)  # numbers: strings
    r = client.post(OPENAI, json=CHAT)
    assert (r.headers["retry-after"], r.headers["retry-after-ms"]) == ("1", "1000")
    assert "retry-after" not in client.post(OPENAI, json=CHAT).headers  # success: no header


def test_fail_rate_is_about_right_and_follows_the_seed(url: str, client: httpx.Client) -> None:
    def run(seed: int) -> list[int]:
        script(url, fail_rate=0.5, status=503, seed=seed)
        return [client.post(OPENAI, json=CHAT).status_code for _ in range(200)]

    first = run(1)
    assert set(first) == {200, 503}
    assert 70 <= first.count(503) <= 130
    assert run(1) == first  # the same seed fails the same requests
    assert run(2) != first
    script(url, fail_rate=0.1, status=500, seed=7)
    statuses = [client.post(ANTHROPIC, json=MESSAGES).status_code for _ in range(200)]
    assert 5 <= statuses.count(500) <= 40 and statuses.count(200) == 200 - statuses.count(500)


def test_fail_next_comes_before_fail_rate(url: str, client: httpx.Client) -> None:
    script(url, fail_next=3, fail_rate=1.0, status=502)
    assert {client.post(OPENAI, json=CHAT).status_code for _ in range(6)} == {502}
    script(url, fail_next=2, status=500, fail_rate=0.0)
    assert [client.post(OPENAI, json=CHAT).status_code for _ in range(3)] == [500, 500, 200]


def test_down_closes_without_a_response(url: str, client: httpx.Client) -> None:
    script(url, down=True)
    for method, path in (("POST", OPENAI), ("POST", ANTHROPIC), ("GET", "/v1/models")):
        with pytest.raises(httpx.RemoteProtocolError):
            client.request(method, path, json=CHAT)
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as s:
        body = json.dumps(CHAT).encode()
        s.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (
                OPENAI.encode(),
                len(body),
                body,
            )
        )
        assert s.recv(65536) == b""  # closed, not a byte sent
    answer = stats(url)  # the control API still answers
    assert answer["count"] == 4 and {r["status"] for r in answer["requests"]} == {None}
    script(url)  # up again
    assert client.post(OPENAI, json=CHAT).status_code == 200


# --- timing and streams --------------------------------------------------------------------------


def test_first_byte_delay(url: str, client: httpx.Client) -> None:
    started = time.monotonic()
    assert client.post(OPENAI, json=CHAT).status_code == 200
    assert time.monotonic() - started < 0.25
    script(url, first_byte_delay_ms=300)
    for path, body in ((OPENAI, CHAT), (ANTHROPIC, MESSAGES)):
        started = time.monotonic()
        assert client.post(path, json=body).status_code == 200
        assert time.monotonic() - started >= 0.3
    script(url, first_byte_delay_ms=300, fail_next=1, status=503)
    started = time.monotonic()
    assert client.post(OPENAI, json=CHAT).status_code == 503  # failures wait too
    assert time.monotonic() - started >= 0.3


def test_status_is_null_until_the_status_line_is_sent(url: str) -> None:
    script(url, first_byte_delay_ms=600)
    done: list[int] = []
    worker = threading.Thread(
        target=lambda: done.append(httpx.post(url + OPENAI, json=CHAT, timeout=5).status_code)
    )
    worker.start()
    deadline = time.monotonic() + 0.5
    while not stats(url)["requests"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["status"] for r in stats(url)["requests"]] == [None]  # arrived, not yet answered
    worker.join()
    assert done == [200] and [r["status"] for r in stats(url)["requests"]] == [200]


def test_stall_mid_stream_openai(url: str, client: httpx.Client) -> None:
    script(url, stall_after_chunks=2, stall_seconds=0.4)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", OPENAI, json=body) as r:
        lines = list(sse_lines(r))
    contents = [(at, content_of(line)) for at, line in lines if content_of(line)]
    assert [text for _, text in contents] == [f"tok{i} " for i in range(5)]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(contents)]
    assert gaps[1] >= 0.35 and max(gaps[0], *gaps[2:]) < 0.2  # the pause after the second
    assert lines[-1][1] == "data: [DONE]"  # then the stream goes on to its end
    usage = json.loads(lines[-2][1][6:])["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 3}  # no cache: as always


def test_stall_mid_stream_anthropic(url: str, client: httpx.Client) -> None:
    script(url, stall_after_chunks=0, stall_seconds=0.3)
    started = time.monotonic()
    with client.stream("POST", ANTHROPIC, json={**MESSAGES, "stream": True}) as r:
        lines = list(sse_lines(r))
    events = [line[7:] for _, line in lines if line.startswith("event: ")]
    assert events.count("content_block_delta") == 5 and events[-1] == "message_stop"
    first_delta = next(at for at, line in lines if "content_block_delta" in line)
    start = next(at for at, line in lines if "message_start" in line)
    assert first_delta - start >= 0.25 and start - started < 0.2


@pytest.mark.parametrize("after", [0, 3, 9])
def test_close_mid_stream_openai(url: str, client: httpx.Client, after: int) -> None:
    script(url, close_after_chunks=after)
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", OPENAI, json={**CHAT, "stream": True}) as r,
    ):
        lines.extend(line for _, line in sse_lines(r))
    assert r.status_code == 200
    assert [content_of(line) for line in lines[1:]] == [f"tok{i} " for i in range(min(after, 5))]
    assert "[DONE]" not in "".join(lines)
    assert client.post(OPENAI, json=CHAT).status_code == 200  # a new connection serves


def test_close_mid_stream_anthropic_and_speech(url: str, client: httpx.Client) -> None:
    script(url, close_after_chunks=2)
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", ANTHROPIC, json={**MESSAGES, "stream": True}) as r,
    ):
        lines.extend(line for _, line in sse_lines(r))
    events = [line[7:] for line in lines if line.startswith("event: ")]
    assert events == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 2]
    audio = bytearray()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/v1/audio/speech", json={"model": "tts", "input": "x"}) as r,
    ):
        for piece in r.iter_raw():
            audio += piece
    assert bytes(audio) == b"".join(SPEECH_AUDIO[:2])
    assert client.post(OPENAI, json=CHAT).status_code == 200  # non-streaming: not bent


# --- prompt cache --------------------------------------------------------------------------------


def openai_cached(client: httpx.Client, **fields: Any) -> int:
    usage = client.post(OPENAI, json={**CHAT, **fields}).json()["usage"]
    assert usage["prompt_tokens"] == 11
    cached: int = usage["prompt_tokens_details"]["cached_tokens"]
    return cached


def test_cache_openai_miss_then_hit(
    instances: tuple[str, str], url: str, client: httpx.Client
) -> None:
    assert openai_cached(client, prompt_cache_key="k1") == 3  # no cache script: as always
    script(url, cache=True)
    assert openai_cached(client, prompt_cache_key="k1") == 0  # first seen
    assert openai_cached(client, prompt_cache_key="k1") == 8
    assert openai_cached(client, prompt_cache_key="k2", user="u1") == 0  # the key comes first
    assert openai_cached(client, prompt_cache_key="k2", user="u2") == 8
    assert openai_cached(client, user="u1") == 0  # then user
    assert openai_cached(client, user="u1") == 8
    other = [{"role": "user", "content": [{"type": "text", "text": "Other"}]}]
    assert openai_cached(client, messages=other) == 0  # then the first message's content
    assert openai_cached(client, messages=other) == 8
    body = {**CHAT, "prompt_cache_key": "k1", "stream": True}
    with client.stream(
        "POST", OPENAI, json={**body, "stream_options": {"include_usage": True}}
    ) as r:
        last = [line for _, line in sse_lines(r)][-2]
    assert json.loads(last[6:])["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
    # per instance: dep-b has never seen k1
    script(instances[1], cache=True)
    r = httpx.post(instances[1] + OPENAI, json={**CHAT, "prompt_cache_key": "k1"})
    assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    # a new script keeps what was seen, a reset forgets it
    script(url, cache=True, name="renamed")
    assert openai_cached(client, prompt_cache_key="k1") == 8
    reset(url)
    script(url, cache=True)
    assert openai_cached(client, prompt_cache_key="k1") == 0
    assert [r["prompt_cache_key"] for r in stats(url)["requests"]] == ["k1"]


def test_cache_anthropic_miss_then_hit(url: str, client: httpx.Client) -> None:
    def usage(**fields: Any) -> dict[str, int]:
        answer: dict[str, int] = client.post(ANTHROPIC, json={**MESSAGES, **fields}).json()["usage"]
        return answer

    assert usage()["cache_read_input_tokens"] == 3  # no cache script: as always
    script(url, cache=True)
    miss = {"input_tokens": 3, "cache_creation_input_tokens": 8, "cache_read_input_tokens": 0}
    hit = {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 8}
    assert usage(metadata={"user_id": "u1"}) == {**miss, "output_tokens": 5}
    assert usage(metadata={"user_id": "u1"}) == {**hit, "output_tokens": 5}
    assert usage(prompt_cache_key="ignored", metadata={"user_id": "u2"}) == {
        **miss,
        "output_tokens": 5,
    }
    assert usage() == {**miss, "output_tokens": 5}  # the first message's content, "Hi"
    with client.stream("POST", ANTHROPIC, json={**MESSAGES, "stream": True}) as r:
        start = json.loads(
            next(
                line for _, line in sse_lines(r) if line.startswith('data: {"type":"message_start"')
            )[6:]
        )
    assert start["message"]["usage"] == {**hit, "output_tokens": 1}
    assert [r["user"] for r in stats(url)["requests"][:3]] == [None, "u1", "u1"]


# --- stats, reset, names -------------------------------------------------------------------------


def test_stats_list_arrivals(instances: tuple[str, str], url: str, client: httpx.Client) -> None:
    other = instances[1]
    before = time.monotonic()
    client.post(OPENAI, json={**CHAT, "user": "u1", "prompt_cache_key": "k"})
    httpx.post(other + ANTHROPIC, json={**MESSAGES, "metadata": {"user_id": "u2"}})
    client.post(ANTHROPIC, json={**MESSAGES, "stream": True})
    client.get("/v1/models")
    client.post(OPENAI, json={**CHAT, "model": "fail-429"})
    client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    client.post("/v1/nope", content=b"[]")
    client.post("/nope")  # not /v1: not counted
    after = time.monotonic()
    answer = stats(url)
    requests = answer["requests"]
    assert answer["count"] == len(requests) == 6
    assert [(r["path"], r["model"], r["stream"], r["status"]) for r in requests] == [
        (OPENAI, "gpt-x", False, 200),
        (ANTHROPIC, "claude-x", True, 200),
        ("/v1/models", None, False, 200),
        (OPENAI, "fail-429", False, 429),
        ("/v1/embeddings", "e", False, 200),
        ("/v1/nope", None, False, 404),
    ]
    assert (requests[0]["user"], requests[0]["prompt_cache_key"]) == ("u1", "k")
    arrivals = [r["at"] for r in requests]
    assert before < arrivals[0] and arrivals == sorted(arrivals) and arrivals[-1] < after
    assert len(set(arrivals)) == len(arrivals)
    (elsewhere,) = stats(other)["requests"]  # the same clock in both instances
    assert arrivals[0] < elsewhere["at"] < arrivals[1] and elsewhere["user"] == "u2"


def test_stats_keep_the_last_ten_thousand(url: str) -> None:
    address = urlsplit(url)
    one = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v1/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=10) as s:
        s.sendall(one * 10_050 + last)  # pipelined
        while s.recv(1 << 20):
            pass
    answer = stats(url)
    assert answer["count"] == 10_051 and len(answer["requests"]) == 10_000
    assert answer["requests"][-1]["path"] == "/v1/last"


def test_reset_clears(url: str, client: httpx.Client) -> None:
    script(url, fail_next=5, status=500, cache=True, name="temp", first_byte_delay_ms=1)
    client.post(OPENAI, json=CHAT)
    assert stats(url)["count"] == 1
    reset(url)
    assert stats(url) == {"requests": [], "count": 0, "recording": True}
    r = client.post(OPENAI, json=CHAT)
    assert r.status_code == 200 and r.headers["x-fake-instance"] == "dep-a"
    assert r.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}  # no cache script
    assert httpx.get(url + "/_fake/script").json()["script"]["fail_next"] == 0


def test_instance_header(instances: tuple[str, str], url: str, client: httpx.Client) -> None:
    answers = [
        client.post(OPENAI, json=CHAT),
        client.post(OPENAI, json={**CHAT, "stream": True}),
        client.post(ANTHROPIC, json={**MESSAGES, "model": "overloaded"}),
        client.post("/v1/embeddings", json={"model": "e", "input": "x"}),
        client.get("/v1/models"),
        client.post(OPENAI, content=b"{}"),
        client.get("/v1/unknown"),
        client.get("/_fake/stats"),
    ]
    assert [r.headers["x-fake-instance"] for r in answers] == ["dep-a"] * len(answers)
    assert httpx.post(instances[1] + OPENAI, json=CHAT).headers["x-fake-instance"] == "dep-b"
    script(url, name="dep-z")
    assert client.post(OPENAI, json=CHAT).headers["x-fake-instance"] == "dep-z"
    script(url, fail_next=1)  # a script without a name: the instance's own again
    r = client.post(OPENAI, json=CHAT)
    assert (r.status_code, r.headers["x-fake-instance"]) == (500, "dep-a")


def test_bad_scripts_are_refused(url: str, client: httpx.Client) -> None:
    script(url, fail_next=1)
    for fields in (
        {"fail_nxt": 1},
        {"status": 200},
        {"fail_rate": 1.5},
        {"stall_after_chunks": 1},
        {"down": "yes"},
        {"name": "a\r\nb"},
    ):
        with pytest.raises(ValueError, match="400"):
            script(url, **fields)
    assert client.post(url + "/_fake/script", content=b"[1]").status_code == 400
    assert client.get("/_fake/reset").status_code == 405
    assert client.get("/_fake/other").status_code == 404
    assert client.post(OPENAI, json=CHAT).status_code == 500  # the script is unchanged


# --- instances started with flags ----------------------------------------------------------------


def test_an_instance_without_script_records_nothing() -> None:
    with run_fake_upstream() as url:
        r = httpx.post(url + OPENAI, json=CHAT)
        assert r.status_code == 200 and "x-fake-instance" not in r.headers
        answer = httpx.get(url + "/_fake/stats").json()
        assert answer == {"requests": [], "count": 0, "recording": False}
        with pytest.raises(RuntimeError, match="reset"):
            stats(url)
        reset(url)
        httpx.post(url + OPENAI, json=CHAT)
        assert stats(url)["count"] == 1


def test_command_line_fail_rate_and_name() -> None:
    with (
        run_fake_upstream(name="bench-b", fail_rate=0.3, fail_status=529, seed=3) as url,
        httpx.Client(base_url=url) as client,
    ):

        def statuses() -> list[int]:
            return [client.post(ANTHROPIC, json=MESSAGES).status_code for _ in range(100)]

        first = statuses()
        assert set(first) == {200, 529} and 15 <= first.count(529) <= 45
        assert client.get("/v1/models").headers["x-fake-instance"] == "bench-b"
        assert stats(url)["count"] == 101  # recording from the start
        reset(url)  # back to the flags' script, its draws afresh
        assert statuses() == first
        script(url)
        assert set(statuses()) == {200}


def test_command_line_down() -> None:
    with run_fake_upstream(down=True) as url:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(url + OPENAI, json=CHAT)
        reset(url)  # still down: that is how it started
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url + "/v1/models")
        assert [r["status"] for r in stats(url)["requests"]] == [None]
        script(url)
        assert httpx.post(url + OPENAI, json=CHAT).status_code == 200
