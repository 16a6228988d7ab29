"""Fuzz what an upstream answers, for every path where the gateway reads one, through the real
ASGI app in process (the upstream faked with ``httpx.MockTransport``).

The answers are built to reach past the first check: a valid answer of the upstream's dialect
with one or two parts wrong (a field missing, null, or of another type: text for a count, an
object for a list...), and for streams events dropped, repeated, renamed, cut short, or not JSON,
an error event or ``[DONE]`` in the middle; error statuses with bodies that are not JSON or not
an error; 200 with a body that is not JSON; no answer at all (a refused connection, a timeout), or
one cut off part-way (a timeout, a reset, a broken protocol) or left hanging. The calls: every
endpoint to each upstream dialect, Anthropic's token count, a native stored response's ``GET``
and ``DELETE``, and chat, Messages and Responses calls that fall back (or retry on a second
deployment) from one dialect's upstream to the other's, both ways, from a caller whose limits
admit every call. For every one, the caller gets 200 or the upstream's error (never a 500),
errors in the called API's shape, a stream that ends with its API's own end or error event
(speech, which has none, is cut off), exactly one ledger row whose status is what the caller was
told (none for what is not a call to a model: a token count, a stored response), and no error
logged with a traceback. Native responses with odd ids are kept whole or not at all; one whose
id PostgreSQL refuses is not kept, and a warning says so. The examples are derandomized, so the
suite runs the same ones every time. Upstreams that stall are tests/test_fuzz_timeouts.py's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.asgi_replies import Tracebacks, send, told
from support.fuzzed_upstreams import (
    COUNT_PATH,
    EXTRA_CONFIG,
    FakeUpstream,
    Request,
    chat,
    count_tokens,
    limited,
    messages,
    quiet_request_log,
    responses,
    start_over,
)
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

# --- the calls --------------------------------------------------------------------------------

Case = tuple[Request, Answer, Answer | None]
"""A call, what its upstream answers, and what the upstream it falls back to answers (None when
it has none)."""
Cases = list[tuple[str, st.SearchStrategy[Case], int]]
"""Named strategies, each with its number of examples."""
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


def crossed(model: str, first: str, then: str, count: int) -> Cases:
    """A chat, a Messages and a Responses call (each JSON and streamed) to ``model``, whose
    upstream speaks ``first`` and whose fallback, or second deployment, speaks ``then``."""
    return [
        *both(f"chat, {model}", lambda s: st.just(chat(model, s)), first, count, then),
        *both(f"messages, {model}", lambda s: st.just(messages(model, s)), first, count, then),
        *both(f"responses, {model}", stored_or_not(model), first, count, then),
    ]


FALLBACK_CASES: Cases = [
    *crossed("gpt-then-claude", "openai", "anthropic", 50),  # a fallback alias
    *crossed("claude-then-gpt", "anthropic", "openai", 50),
    *crossed("gpt-or-claude", "openai", "anthropic", 50),  # a second deployment
    *crossed("claude-or-gpt", "anthropic", "openai", 50),
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


@pytest.fixture
def fresh(tracebacks: Tracebacks) -> Callable[[], None]:
    """Before an example: no ledger row, no stored response, nothing logged."""
    quiet_request_log()
    return lambda: start_over(tracebacks)


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


REFUSED_IDS = st.sampled_from(
    ["\x00", "resp_\x00", "resp_\x00\x00x", "resp_" + "a" * 96, "é" * 1000]
) | st.tuples(st.text(max_size=20), st.just("\x00"), st.text(max_size=20)).map("".join)
"""Ids PostgreSQL refuses to keep: with a NUL (its text takes none), or longer than the id's
column (SQLite would take them). A lone surrogate is not among them: the gateway reads one as
U+FFFD (``providers.json_text``), which any database keeps."""


def test_a_native_response_id_postgresql_refuses_is_not_stored_and_said_so(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    fresh: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A native response whose id holds what PostgreSQL's text refuses (a NUL), in the
    upstream's Response object or its ``response.created`` event: the caller's answer stands
    (200, one row), the response is not kept, a warning says so, and nothing is logged with a
    traceback. Meant for PostgreSQL (the suite's PostgreSQL run); it holds on SQLite too."""
    alice = tenants["alice"]
    upstream = FakeUpstream()

    @examples(60)
    @given(response_id=REFUSED_IDS, stream=st.booleans())
    def fuzz(response_id: str, stream: bool) -> None:
        upstream.start(native_answer(response_id, stream), None)
        fresh()
        caplog.clear()
        current = gateway_runtime(upstream, EXTRA_CONFIG)
        reply = run(send(*responses("native-model", stream, True), alice.raw))
        assert told("/v1/responses", reply) == 200, reply.body[-500:]
        current.ledger.flush()
        assert [row.status_code for row in UsageRecord.objects.all()] == [200]
        assert not StoredResponse.objects.exists()
        said = [(r.name, r.levelname) for r in caplog.records if r.name == "tollgate.responses"]
        assert said == [("tollgate.responses", "WARNING")], (said, response_id)
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()
