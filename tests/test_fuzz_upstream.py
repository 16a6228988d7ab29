"""Fuzz what an upstream answers, for every path where the gateway reads one, through the real
ASGI app in process (the upstream faked with ``httpx.MockTransport``).

The answers are built to reach past the first check: a valid answer of the upstream's dialect
with one or two parts wrong (a field missing, null, or of another type: text for a count, an
object for a list...), and for streams events dropped, repeated, renamed, cut short, or not JSON,
an error event or ``[DONE]`` in the middle; error statuses with bodies that are not JSON or not
an error; 200 with a body that is not JSON; no answer at all (a refused connection, a timeout), or
one cut off part-way (a timeout, a reset, a broken protocol) or left hanging. The calls: every
endpoint to each upstream dialect, Anthropic's token count, a native stored response's ``GET``
and ``DELETE``, and calls that fall back (or retry) from one dialect's upstream to the other's,
from a caller whose limits admit every call. For every one, the caller gets 200 or the
upstream's error (never a 500), errors in the called API's shape, a stream that ends with its
API's own end or error event (speech, which has none, is cut off), exactly one ledger row whose
status is what the caller was told (none for what is not a call to a model: a token count, a
stored response), and no error logged with a traceback. Native responses with odd ids are kept
whole or not at all. The examples are derandomized, so the suite runs the same ones every time.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.asgi_replies import Tracebacks, send, told
from support.inprocess import ANTHROPIC_PATH
from support.upstream_answers import (
    CHUNKS,
    COMPLETION,
    DELETED,
    EMBEDDINGS,
    IMAGES,
    INPUT_ITEMS,
    MESSAGE,
    MESSAGE_EVENTS,
    RESPONSE,
    RESPONSE_EVENTS,
    SECOND_HOST,
    SECOND_PROVIDERS,
    TOKEN_COUNT,
    Answer,
    answers,
    dumps,
    encoded,
    json_answer,
    speech,
    stalling,
    stream_answer,
    transcription,
)

from conftest import TenantKey, examples
from gateway import runtime
from gateway.models import StoredResponse, UsageRecord
from gateway.tenants import auth

EXTRA_CONFIG = (
    SECOND_PROVIDERS
    + """
[providers.native]
type = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
responses = true

[models."native-model"]
provider = "native"
upstream_model = "gpt-native"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."gpt-then-claude"]
provider = "fake"
upstream_model = "gpt-first"
fallbacks = ["claude-second"]
input_per_mtok = 1.0

[models."claude-then-gpt"]
provider = "fake-anthropic"
upstream_model = "claude-first"
fallbacks = ["gpt-second"]
input_per_mtok = 1.0

[models."native-then-claude"]
provider = "native"
upstream_model = "gpt-native"
fallbacks = ["claude-second"]
input_per_mtok = 1.0

[models."claude-second"]
provider = "second-anthropic"
upstream_model = "claude-second"
output_per_mtok = 2.0

[models."gpt-second"]
provider = "second-openai"
upstream_model = "gpt-second"
output_per_mtok = 2.0

[models."gpt-timed"]
provider = "fake"
upstream_model = "gpt-first"
fallbacks = ["claude-second"]
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.05

[models."claude-timed"]
provider = "fake-anthropic"
upstream_model = "claude-first"
fallbacks = ["gpt-second"]
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.05

[models."gpt-or-claude"]
deployments = [
  { provider = "fake", upstream_model = "gpt-first" },
  { provider = "second-anthropic", upstream_model = "claude-second", priority = 1 },
]
input_per_mtok = 1.0

[router]
backoff_base_seconds = 0.0
"""
)
"""A model on an upstream that serves the Responses API itself; models of one dialect whose
calls fall back to a model of the other on another upstream (``second.test``), or retry on a
deployment of the other there (``gpt-or-claude``), the first with short timeouts of its own
(``-timed``: its upstream may hang); retries without backoff."""
FIRST_HOST = "upstream.test"

# --- the calls --------------------------------------------------------------------------------

Request = tuple[str, dict[str, Any]]
"""The path and the body (or multipart form) of a call."""
Case = tuple[Request, Answer, Answer | None]
"""A call, what its upstream answers, and what the upstream it falls back to answers (None when
it has none)."""
Cases = list[tuple[str, st.SearchStrategy[Case], int]]
"""Named strategies, each with its number of examples."""
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
ANTHROPIC_TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]
COUNT_PATH = ANTHROPIC_PATH + "/count_tokens"


def chat(model: str, stream: bool) -> Request:
    body = {"model": model, "messages": HI, "tools": TOOLS, "stream": stream}
    return "/v1/chat/completions", {"json": body}


def messages(model: str, stream: bool) -> Request:
    body = {"model": model, "max_tokens": 100, "messages": HI, "tools": ANTHROPIC_TOOLS}
    return ANTHROPIC_PATH, {"json": {**body, "stream": stream}}


def count_tokens(model: str) -> Request:
    return COUNT_PATH, {"json": {"model": model, "messages": HI, "tools": ANTHROPIC_TOOLS}}


def responses(model: str, stream: bool, store: bool) -> Request:
    body = {"model": model, "input": "hi", "tools": [{"type": "function", "name": "f"}]}
    return "/v1/responses", {"json": {**body, "stream": stream, "store": store}}


JSON_AND_EVENTS = {
    "openai": (COMPLETION, CHUNKS),
    "anthropic": (MESSAGE, MESSAGE_EVENTS),
    "responses": (RESPONSE, RESPONSE_EVENTS),
}
"""What a valid answer of each upstream dialect is: whole, and streamed."""


def both(
    name: str,
    calls: Callable[[bool], st.SearchStrategy[Request]],
    dialect: str,
    count: int,
    fallback: str | None = None,
    stalls: bool = False,
) -> Cases:
    """The JSON and the streamed case of one path (``calls(stream)``) to an upstream of
    ``dialect``, falling back to one of the ``fallback`` dialect when given; the first upstream
    hangs now and then when it ``stalls``."""

    def answer(stream: bool, dialect: str | None, stalls: bool) -> st.SearchStrategy[Any]:
        if dialect is None:
            return st.none()
        whole, events = JSON_AND_EVENTS[dialect]
        valid = stream_answer(events) if stream else json_answer(whole)
        return answers(stalling(valid) if stalls else valid)

    return [
        (
            name + (" stream" if stream else ""),
            st.tuples(
                calls(stream), answer(stream, dialect, stalls), answer(stream, fallback, False)
            ),
            count,
        )
        for stream in (False, True)
    ]


def one(name: str, request: Request, answer: st.SearchStrategy[Answer], count: int) -> Cases:
    """A case of one request, to an upstream without a fallback."""
    return [(name, st.tuples(st.just(request), answer, st.none()), count)]


def stored_or_not(model: str) -> Callable[[bool], st.SearchStrategy[Request]]:
    """A Responses request to ``model``, with ``store`` on or off."""
    return lambda stream: st.builds(responses, st.just(model), st.just(stream), st.booleans())


CASES: Cases = [
    *both("chat to openai", lambda s: st.just(chat("gpt-test", s)), "openai", 200),
    *both("chat to anthropic", lambda s: st.just(chat("claude-media", s)), "anthropic", 200),
    *both(
        "messages to anthropic", lambda s: st.just(messages("claude-media", s)), "anthropic", 200
    ),
    *both("messages to openai", lambda s: st.just(messages("gpt-test", s)), "openai", 200),
    *both("responses bridged", stored_or_not("gpt-test"), "openai", 200),
    *both("responses native", stored_or_not("native-model"), "responses", 200),
    *one(
        "count_tokens to anthropic",
        count_tokens("claude-media"),
        answers(json_answer(TOKEN_COUNT)),
        100,
    ),
    *one(
        "embeddings",
        ("/v1/embeddings", {"json": {"model": "embed-test", "input": "hi"}}),
        answers(json_answer(EMBEDDINGS)),
        150,
    ),
    *one(
        "images",
        ("/v1/images/generations", {"json": {"model": "image-test", "prompt": "x"}}),
        answers(json_answer(IMAGES)),
        150,
    ),
    *one(
        "speech",
        ("/v1/audio/speech", {"json": {"model": "tts-test", "input": "hi", "voice": "alloy"}}),
        answers(speech),
        100,
    ),
    *one(
        "transcriptions",
        (
            "/v1/audio/transcriptions",
            {"data": {"model": "stt-test"}, "files": {"file": ("a.wav", b"RIFF0000")}},
        ),
        answers(transcription),
        100,
    ),
]
assert sum(count for *_, count in CASES) >= 2_000

FALLBACK_CASES: Cases = [
    *both(
        "chat, openai to anthropic",
        lambda s: st.just(chat("gpt-then-claude", s)),
        "openai",
        60,
        "anthropic",
    ),
    *both(
        "chat, a deployment of each",
        lambda s: st.just(chat("gpt-or-claude", s)),
        "openai",
        60,
        "anthropic",
    ),
    *both(
        "messages, anthropic to openai",
        lambda s: st.just(messages("claude-then-gpt", s)),
        "anthropic",
        60,
        "openai",
    ),
    *both(
        "messages, a deployment of each",
        lambda s: st.just(messages("gpt-or-claude", s)),
        "openai",
        60,
        "anthropic",
    ),
    *both(
        "responses, bridged openai to anthropic",
        stored_or_not("gpt-then-claude"),
        "openai",
        60,
        "anthropic",
    ),
    *both(
        "responses, native to anthropic",
        stored_or_not("native-then-claude"),
        "responses",
        60,
        "anthropic",
    ),
    *both(
        "chat, a hanging openai to anthropic",
        lambda s: st.just(chat("gpt-timed", s)),
        "openai",
        40,
        "anthropic",
        stalls=True,
    ),
    *both(
        "messages, a hanging anthropic to openai",
        lambda s: st.just(messages("claude-timed", s)),
        "anthropic",
        40,
        "openai",
        stalls=True,
    ),
    # The count falls back to the gateway's own: a model of the OpenAI dialect asks no upstream
    # (as if its upstream answered).
    (
        "count_tokens, anthropic to a local count",
        st.tuples(
            st.just(count_tokens("claude-then-gpt")),
            answers(json_answer(TOKEN_COUNT)),
            st.just(Answer(200, dumps(TOKEN_COUNT))),
        ),
        60,
    ),
]
"""Calls whose first upstream fails (answers wrong, or hangs) and that fall back, or retry, to
an upstream of the other dialect."""

# --- the fuzz -----------------------------------------------------------------------------------


@dataclass
class FakeUpstream:
    """The answers of the upstream (``FIRST_HOST``) and of the one a call falls back to
    (``SECOND_HOST``), each the same to every request of the example (retries get the same);
    the requests, in order."""

    answer: Answer = field(default_factory=lambda: Answer(200, b"{}"))
    fallback: Answer | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == FIRST_HOST:
            return self.answer.response()
        assert request.url.host == SECOND_HOST and self.fallback is not None, request.url
        return self.fallback.response()

    def start(self, answer: Answer, fallback: Answer | None) -> None:
        self.answer, self.fallback = answer, fallback
        self.requests.clear()

    @property
    def all_failed(self) -> bool:
        """Whether every upstream of the call says no (an error status, or no answer): then
        the call fails too."""
        return self.answer.fails and (self.fallback is None or self.fallback.fails)


@pytest.fixture
def fresh(tracebacks: Tracebacks) -> Callable[[], None]:
    """Before an example: no ledger row, no stored response, nothing logged."""
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a line per 4xx and 5xx

    def clear() -> None:
        UsageRecord.objects.all().delete()
        StoredResponse.objects.all().delete()
        tracebacks.records.clear()

    return clear


def limited(who: TenantKey) -> None:
    """Give ``who``'s tenant limits it never reaches: each call is then admitted (and a call
    that falls back admitted again, on its fallback's prices) and settled."""
    who.tenant.rpm_limit, who.tenant.tpm_limit = 10**6, 10**9
    who.tenant.budget_usd = Decimal(10**6)
    who.tenant.save()
    auth._key_cache.clear()


@pytest.mark.parametrize(
    ("name", "cases", "count"),
    CASES + FALLBACK_CASES,
    ids=[case[0] for case in CASES + FALLBACK_CASES],
)
def test_no_upstream_answer_breaks_a_call(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    fresh: Callable[[], None],
    name: str,
    cases: st.SearchStrategy[Case],
    count: int,
) -> None:
    key = tenants["alice"].raw
    limited(tenants["alice"])
    upstream = FakeUpstream()

    @examples(count)
    @given(case=cases)
    def fuzz(case: Case) -> None:
        (path, options), answer, fallback = case
        upstream.start(answer, fallback)
        fresh()
        current = gateway_runtime(upstream, EXTRA_CONFIG)
        reply = run(send(path, copy.deepcopy(options), key))
        described = (reply.status, reply.body[-500:])
        status = told(path, reply)
        if upstream.all_failed:
            assert reply.status >= 400, described  # the upstreams' failure is the call's
        current.ledger.flush()
        rows = list(UsageRecord.objects.all())
        if path == COUNT_PATH:
            assert not rows, "a token count is not a call to a model: it keeps no row"
        else:
            assert len(rows) == 1, (len(rows), described)
            assert rows[0].request_id == reply.headers["x-request-id"]
            if status == 502 and reply.status == 200:  # a stream that failed once started
                assert 400 <= rows[0].status_code != 500, rows[0].status_code
            else:
                assert rows[0].status_code == status, (rows[0].status_code, described)
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()


STORED_ID = "resp_kept"
STORED_CALLS = [
    ("GET", "", RESPONSE),
    ("GET", "/input_items", INPUT_ITEMS),
    ("DELETE", "", DELETED),
]
"""What a caller asks of a stored response (a method and what follows its id), and what the
upstream validly answers."""


def test_no_upstream_answer_breaks_a_stored_response(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    fresh: Callable[[], None],
) -> None:
    """``GET`` and ``DELETE /v1/responses/{id}`` (and ``GET .../input_items``) of a response
    that an upstream serving the Responses API keeps ask that upstream, whatever it answers:
    the same invariants, but no ledger row (this is not a call to a model). A ``DELETE`` the
    caller was told succeeded leaves nothing stored; one that failed leaves the response."""
    alice = tenants["alice"]
    upstream = FakeUpstream()
    cases = st.sampled_from(STORED_CALLS).flatmap(
        lambda call: st.tuples(st.just(call[:2]), answers(json_answer(call[2])))
    )

    @examples(200)
    @given(case=cases)
    def fuzz(case: tuple[tuple[str, str], Answer]) -> None:
        (method, suffix), answer = case
        upstream.start(answer, None)
        fresh()
        StoredResponse.objects.create(
            id=STORED_ID, tenant=alice.tenant, model="native-model", provider="native", native=True
        )
        current = gateway_runtime(upstream, EXTRA_CONFIG)
        path = f"/v1/responses/{STORED_ID}{suffix}"
        reply = run(send(path, {}, alice.raw, method))
        status = told(path, reply)
        if upstream.all_failed:
            assert status >= 400, (reply.status, reply.body)
        [asked] = upstream.requests
        assert (asked.method, asked.url.path) == (method, path)
        kept = StoredResponse.objects.filter(id=STORED_ID).exists()
        assert kept == (method != "DELETE" or status != 200), (method, status)
        current.ledger.flush()
        assert not UsageRecord.objects.exists()
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()


ODD_IDS = st.sampled_from(
    [
        "\x00",
        "resp_\x00",
        "resp_" + "a" * 95,  # 100 characters: the longest the gateway keeps
        "resp_" + "a" * 96,
        "resp_" + "é" * 300,
        "resp_ü\u200b\U0001f600",
        "resp\n1\r\t\x1b[31m",
        "resp 1",
        "resp/1",
        "resp?x=1",
        "resp#1",
        "resp%00",
        "%2F",
        ".",
        "..",
    ]
) | st.text(min_size=1, max_size=120)
"""Ids no upstream should send: NUL, control characters, non-ASCII, URL syntax, too long."""


def native_answer(response_id: str, stream: bool) -> Answer:
    """A valid native Responses answer whose response has the id ``response_id``."""
    response = {**RESPONSE, "id": response_id}
    if not stream:
        return Answer(200, dumps(response))
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    events = [
        ("response.created", {"type": "response.created", "response": started}),
        *RESPONSE_EVENTS[1:-1],
        ("response.completed", {"type": "response.completed", "response": response}),
    ]
    return Answer(200, b"".join(encoded(event) for event in events), "text/event-stream")


def test_an_odd_native_response_id_is_kept_whole_or_not_at_all(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    fresh: Callable[[], None],
) -> None:
    """A native response (stored) whose id, in the upstream's Response object or its
    ``response.created`` event, is odd text: the call is answered as any other (one row, no
    traceback); the response is kept under that very id, never a part of it, and never with a
    NUL (PostgreSQL's text columns refuse one), or not at all. What is kept is found again: its
    ``GET``, ``input_items`` and ``DELETE`` ask the upstream for that same id."""
    alice = tenants["alice"]
    upstream = FakeUpstream()

    @examples(100)
    @given(response_id=ODD_IDS, stream=st.booleans())
    def fuzz(response_id: str, stream: bool) -> None:
        upstream.start(native_answer(response_id, stream), None)
        fresh()
        current = gateway_runtime(upstream, EXTRA_CONFIG)
        reply = run(send(*responses("native-model", stream, True), alice.raw))
        assert told("/v1/responses", reply) == 200, reply.body[-500:]
        current.ledger.flush()
        assert [row.status_code for row in UsageRecord.objects.all()] == [200]
        kept = list(StoredResponse.objects.values_list("id", flat=True))
        assert kept in ([], [response_id]), (kept, response_id)
        assert not any("\x00" in kept_id for kept_id in kept)
        for method, suffix, valid in STORED_CALLS if kept else []:
            upstream.start(Answer(200, dumps(valid)), None)
            path = "/v1/responses/" + quote(response_id, safe="") + suffix
            reply = run(send(path, {}, alice.raw, method))
            assert told(path, reply) == 200, (method, suffix, reply.body)
            [asked] = upstream.requests
            assert (asked.method, asked.url.path) == (method, unquote(path))
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()
