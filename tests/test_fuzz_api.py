"""Fuzz every /v1 endpoint in process (the real ASGI app, upstream faked): 10,000 generated
requests, none may answer 500 and every error must be in the called API's shape.

The bodies are built to reach past the first check: valid-looking requests with fields of the
wrong type, unknown models, nesting and item counts at the limits, NUL, non-ASCII and lone
surrogate text, huge and non-finite numbers, truncated JSON, binary, odd headers. Anthropic's
token count gets the Messages bodies. A stored response's ``GET``, ``input_items`` and ``DELETE``
are asked for by ids of every kind, the caller's own (bridged and native), another tenant's, and
deleted ones: never a 500, and a tenant never sees or deletes another's. The examples are
derandomized, so the suite runs the same ones every time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.asgi_replies import Tracebacks, send, told
from support.fuzzed_upstreams import NATIVE_PROVIDER
from support.inprocess import (
    ANTHROPIC_PATH,
    BASE_URL,
    answer_everything,
    api_client,
    assert_error_shape,
)

from conftest import TenantKey, examples
from gateway import runtime
from gateway.models import StoredResponse, UsageRecord

MODELS = [
    "echo",
    "gpt-test",
    "claude-media",
    "embed-test",
    "image-test",
    "tts-test",
    "stt-test",
    "fail-400",
    "no-such-model",
    "fake/x",
    "",
]

text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from('\x00\ud800\udfff[]{}"\\'), max_size=20
)
wire_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from('\x00[]{}"\\'), max_size=20
)
"""Text a client can put in a form field or a query string: no lone surrogates, which only a
JSON escape can carry (``text`` has them, for bodies)."""
numbers = st.integers(-(10**30), 10**30) | st.floats() | st.sampled_from([0, -1, 2**63, 1e308])
leaves = st.none() | st.booleans() | numbers | text
anything = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


deep = st.builds(nested, st.integers(120, 135), leaves)
many = st.builds(
    lambda n, item: [item] * n,
    st.sampled_from([9_999, 10_000, 10_001]),
    st.sampled_from(["x", {"role": "user", "content": "x"}, 1, [1]]),
)
value = anything | deep | st.sampled_from(["", [], {}, 0])
listed = st.integers(0, 30).flatmap(lambda draw: many if draw == 0 else value)
"""For ``messages`` and ``input``: one in 31 an array at the item limit (slow to build)."""
model = st.sampled_from(MODELS) | value

message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | value,
        "content": text
        | value
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "image_url", "image"]) | value},
                optional={"text": text | value, "image_url": value, "source": value},
            ),
            max_size=3,
        ),
        "tool_calls": value,
        "tool_call_id": text | value,
    },
)
messages = st.lists(message, min_size=0, max_size=4) | listed


def body(required: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        required,
        optional={
            **optional,
            "stream": st.booleans() | value,
            "max_tokens": numbers | value,
            "extra": value,
        },
    )


CHAT = body(
    {"model": model, "messages": messages},
    {
        "tools": value,
        "tool_choice": value,
        "temperature": numbers,
        "stop": value,
        "stream_options": value,
        "n": numbers,
        "max_completion_tokens": numbers,
    },
)
MESSAGES = body(
    {"model": model, "messages": messages},
    {
        "system": text | value,
        "tools": value,
        "stop_sequences": value,
        "metadata": value,
        "thinking": value,
    },
)
EMBEDDINGS = body(
    {"model": model, "input": listed | text}, {"encoding_format": value, "dimensions": numbers}
)
IMAGES = body(
    {"model": model, "prompt": text | value}, {"n": numbers, "size": value, "quality": value}
)
SPEECH = body({"model": model, "input": text | value}, {"voice": value, "response_format": value})


def encoded(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """The body as JSON (big ints and NaN included, lone surrogates as \\ud800 escapes), cut
    short now and then, or not JSON at all."""

    def dumps(data: Any) -> bytes:
        return json.dumps(data).encode()

    as_json = bodies.map(dumps)
    truncated = st.tuples(as_json, st.integers(0, 200)).map(lambda pair: pair[0][: pair[1]])
    return as_json | truncated | st.binary(max_size=64)


header_values = st.sampled_from(
    [
        b"2023-06-01",
        "2023-06-01é".encode(),
        b"",
        b"\x80\xff",
        "prompt-caching-2024-07-31,ü".encode(),
    ]
)
extra_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [b"anthropic-version", b"anthropic-beta", b"x-api-key", b"content-type", b"x-other"]
        ),
        header_values,
    ),
    max_size=2,
)

Request = tuple[str, str, dict[str, Any]]
"""The method, path and keyword arguments of ``httpx.AsyncClient.request``."""


def post(path: str, bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[Request]:
    return st.builds(
        lambda content, headers: ("POST", path, {"content": content, "headers": headers}),
        encoded(bodies),
        extra_headers,
    )


def form_request() -> st.SearchStrategy[Request]:
    fields = st.dictionaries(
        st.sampled_from(["model", "response_format", "language", "x"]),
        st.sampled_from(["stt-test", "echo", "json", "text", "", "é\x00"]) | wire_text,
        max_size=3,
    )
    files = st.lists(
        st.tuples(
            st.sampled_from(["file", "other"]),
            st.binary(max_size=64),
            st.sampled_from(["audio/wav", "", "text/plain"]),
        ),
        max_size=2,
    )
    as_form = st.builds(
        lambda data, parts: (
            "POST",
            "/v1/audio/transcriptions",
            {"data": data, "files": [(name, ("a.wav", raw, kind)) for name, raw, kind in parts]},
        ),
        fields,
        files,
    )
    raw = st.builds(
        lambda content, kind: (
            "POST",
            "/v1/audio/transcriptions",
            {"content": content, "headers": {"content-type": kind.encode()}},
        ),
        st.binary(max_size=128),
        st.sampled_from(
            ["multipart/form-data", "multipart/form-data; boundary=x", "application/json", "é"]
        ),
    )
    return as_form | raw


def get_request() -> st.SearchStrategy[Request]:
    query = st.dictionaries(
        st.sampled_from(["start", "end", "group_by", "x"]),
        st.sampled_from(["2026-11-01", "2026-13-01", "day", "model", "key", "", "é", "\x00"])
        | wire_text,
        max_size=3,
    )
    usage = st.builds(lambda params: ("GET", "/v1/usage", {"params": params}), query)
    model_path = st.builds(
        lambda name: ("GET", "/v1/models/" + name, {}),
        st.sampled_from(MODELS[:-1]) | st.text(alphabet="abc/-_.%é", min_size=1, max_size=10),
    )
    return usage | model_path | st.just(("GET", "/v1/models", {}))


CASES: list[tuple[str, st.SearchStrategy[Request], int]] = [
    ("chat", post("/v1/chat/completions", CHAT), 2000),
    ("messages", post(ANTHROPIC_PATH, MESSAGES), 2000),
    ("count_tokens", post(ANTHROPIC_PATH + "/count_tokens", MESSAGES), 600),
    ("embeddings", post("/v1/embeddings", EMBEDDINGS), 1700),
    ("images", post("/v1/images/generations", IMAGES), 1500),
    ("speech", post("/v1/audio/speech", SPEECH), 1500),
    ("transcriptions", form_request(), 700),
    ("models and usage", get_request(), 600),
]
assert sum(count for *_, count in CASES) >= 10_000


@pytest.fixture
def run(gateway_runtime: Any) -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Runs a coroutine on one event loop kept for the whole fuzz run."""
    gateway_runtime(answer_everything)
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.mark.parametrize(("name", "requests", "count"), CASES, ids=[case[0] for case in CASES])
def test_no_request_answers_500(
    tenants: dict[str, TenantKey],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    name: str,
    requests: st.SearchStrategy[Request],
    count: int,
) -> None:
    key = tenants["alice"].raw
    logging.getLogger("django.request").setLevel(logging.ERROR)  # a 4xx warning per example

    async def send(request: Request) -> httpx.Response:
        method, path, options = request
        headers = [("authorization", f"Bearer {key}".encode())]
        extra = options.pop("headers", {})
        headers += list(extra.items()) if isinstance(extra, dict) else extra
        async with api_client() as client:
            return await client.request(method, path, headers=headers, **options)

    @settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests)
    def fuzz(request: Request) -> None:
        path = request[1]
        response = run(send(request))
        assert response.status_code < 500 or response.status_code in (502, 503, 504), (
            response.status_code,
            response.text,
        )
        if response.status_code >= 400:
            assert_error_shape(ANTHROPIC_PATH if path == ANTHROPIC_PATH else path, response)

    fuzz()


# --- stored responses, by id --------------------------------------------------------------------

OWN = ("resp_alice", "resp_alice_native")
OTHERS = ("resp_bob", "resp_bob_native")
"""The responses alice's and bob's tenants keep: one bridged (kept by the gateway, its body and
input items), one native (kept by the upstream that serves the Responses API)."""
SECRET = "secret of"
"""In every bridged response's text: ``SECRET + " bob"`` never reaches alice."""

response_ids = (
    st.sampled_from([*OWN, *OTHERS])
    | st.sampled_from(
        [
            "",
            "resp_" + "a" * 95,  # 100 characters: the longest the gateway keeps
            "resp_" + "a" * 96,
            "resp_" + "x" * 60_000,  # a URL of httpx's longest (64 KiB)
            "\x00",
            "resp_alice\x00",
            "resp_alice%00",
            "résp_ü\u200b\U0001f600",
            "resp_alice\ud800",
            "\udfff",
            "resp_alice/",
            "resp_alice/input_items",
            "resp_bob/input_items",
            "resp_alice%2Finput_items",
            "resp_bob%2F",
            "%2F",
            "resp_bob?x=1",
            "resp_bob#x",
            ".",
            "..",
            " ",
            "RESP_ALICE",
            "resp_alice ",
            "resp_bob_native\n",
        ]
    )
    | text
)
"""Ids of each tenant's responses, and ids of every odd kind: empty, too long, huge, NUL,
non-ASCII, lone surrogates (a URL carries them as the bytes ``errors="surrogatepass"`` makes,
which a server decodes to U+FFFD), slashes and other URL syntax, as they are or percent-encoded,
dot segments, near misses."""
StoredCall = tuple[str, str, str, str]
"""A method, the suffix after the id (``/input_items``), the id, and the characters of it left
as they are in the URL (the rest is percent-encoded)."""
stored_calls = st.lists(
    st.tuples(
        st.sampled_from([("GET", ""), ("GET", "/input_items"), ("DELETE", "")]),
        response_ids,
        st.sampled_from(["", "/%", "/%?#"]),
    ).map(lambda drawn: (*drawn[0], drawn[1], drawn[2])),
    min_size=1,
    max_size=3,
)


def keep_responses(tenants: dict[str, TenantKey]) -> None:
    """Only alice's and bob's responses (``OWN``, ``OTHERS``) are kept."""
    StoredResponse.objects.all().delete()
    for name in ("alice", "bob"):
        tenant = tenants[name].tenant
        said = f"{SECRET} {name}"
        body = {"id": f"resp_{name}", "object": "response", "output_text": said}
        StoredResponse.objects.create(
            id=f"resp_{name}",
            tenant=tenant,
            model="gpt-test",
            provider="fake",
            body=body,
            input_items=[{"type": "message", "role": "user", "content": said}],
            conversation=[],
        )
        StoredResponse.objects.create(
            id=f"resp_{name}_native",
            tenant=tenant,
            model="native-model",
            provider="native",
            native=True,
        )


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the huge id
def test_no_response_id_answers_500_or_crosses_tenants(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
) -> None:
    """``GET /v1/responses/{id}``, ``GET .../input_items`` and ``DELETE`` by alice, a few in a
    row (so that an id she deleted is asked for again), with ids of every kind: what she keeps
    is answered (a native response by its upstream), anything else is a 404 (or 405) in
    OpenAI's error shape, never a 500; bob's responses are never shown to her, deleted, or asked
    of the upstream; no ledger row (these are not calls to a model)."""
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a 4xx warning per example
    alice = tenants["alice"]
    asked: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        response_id, _, suffix = request.url.path.removeprefix("/v1/responses/").partition("/")
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": response_id, "deleted": True})
        if suffix:
            return httpx.Response(200, json={"object": "list", "data": [], "has_more": False})
        return httpx.Response(200, json={"id": response_id, "object": "response"})

    current = gateway_runtime(upstream, NATIVE_PROVIDER)

    @examples(300)
    @given(calls=stored_calls)
    def fuzz(calls: list[StoredCall]) -> None:
        keep_responses(tenants)
        asked.clear()
        tracebacks.records.clear()
        kept = set(OWN)
        for method, suffix, response_id, safe in calls:
            path = "/v1/responses/" + quote(response_id, safe, errors="surrogatepass") + suffix
            seen_as = httpx.URL(BASE_URL + path).path  # what the server hands the gateway
            found = {
                f"/v1/responses/{kept_id}{kept_suffix}": kept_id
                for kept_id in kept
                for kept_suffix in (["", "/input_items"] if method == "GET" else [""])
            }.get(seen_as)
            if not seen_as.startswith("/v1/"):
                continue  # "..": the client's URL leaves the API
            reply = run(send(path, {}, alice.raw, method))
            described = (method, seen_as[:200], reply.status, reply.body[:300])
            status = told(path, reply)
            assert (SECRET + " bob").encode() not in reply.body, described
            if found is None:
                assert status in (404, 405), described
                continue
            assert status == 200, described
            if method == "DELETE":
                kept.discard(found)
            elif seen_as.endswith("/input_items"):
                assert orjson.loads(reply.body)["object"] == "list", described
            else:
                assert orjson.loads(reply.body)["id"] == found, described
        assert set(StoredResponse.objects.values_list("id", flat=True)) == kept | set(OTHERS)
        assert all(
            request.url.path.startswith("/v1/responses/resp_alice_native") for request in asked
        ), [request.url for request in asked]
        current.ledger.flush()
        assert not UsageRecord.objects.exists()
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()
