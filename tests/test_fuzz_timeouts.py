"""Fuzz upstreams that stall, through the real ASGI app in process (the upstream faked with
``httpx.MockTransport``): a valid answer of each dialect that stops part-way and never goes on
(before its headers, before its first byte, mid-body or mid-stream), on providers whose
configured timeouts are a few hundredths of a second, without a fallback. The calls: chat
completions, /v1/messages and /v1/responses (bridged and native), JSON and streamed, to an
upstream of each dialect. For every one, the caller gets the answer whole, a 504 in the called
API's shape, or (a stream already started) the API's in-band error event, never a 500 and never
a connection left hanging; exactly one ledger row, whose status is the one the caller was told
(504 for a stream cut by the timeout); nothing logged with a traceback. The examples are
derandomized, so the suite runs the same ones every time.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.asgi_replies import Tracebacks, send, told
from support.fuzzed_upstreams import (
    EXTRA_CONFIG,
    FakeUpstream,
    Request,
    chat,
    limited,
    messages,
    quiet_request_log,
    responses,
    start_over,
)
from support.upstream_answers import (
    CHUNKS,
    COMPLETION,
    MESSAGE,
    MESSAGE_EVENTS,
    RESPONSE,
    RESPONSE_EVENTS,
    Answer,
    dumps,
    encoded,
    stalled,
)

from conftest import TenantKey, examples
from gateway import runtime
from gateway.models import UsageRecord

STALLING_CONFIG = (
    EXTRA_CONFIG
    + """
[providers.stalling-openai]
type = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.06

[providers.stalling-anthropic]
type = "anthropic"
base_url = "http://upstream.test/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.06

[providers.stalling-native]
type = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
responses = true
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.06

[models."gpt-stalling"]
provider = "stalling-openai"
upstream_model = "gpt-first"
input_per_mtok = 1.0

[models."claude-stalling"]
provider = "stalling-anthropic"
upstream_model = "claude-first"
input_per_mtok = 1.0

[models."native-stalling"]
provider = "stalling-native"
upstream_model = "gpt-native"
input_per_mtok = 1.0
"""
)
"""Models without a fallback on providers whose timeouts (config.toml's, not the models'
own) end a wait in a few hundredths of a second: the first byte within 0.02 s (each attempt),
the whole answer within 0.06 s."""
HANG_UP_SECONDS = 5.0
"""Longer than any call of the fuzz may take (its retries included): past it, the gateway left
its caller's connection hanging."""

VALID = {
    "openai": (COMPLETION, CHUNKS),
    "anthropic": (MESSAGE, MESSAGE_EVENTS),
    "responses": (RESPONSE, RESPONSE_EVENTS),
}
"""A valid answer of each upstream dialect: whole, and streamed."""


def stalls(dialect: str, stream: bool) -> st.SearchStrategy[Answer]:
    whole, events = VALID[dialect]
    if stream:
        body = b"".join(encoded(event) for event in events)
        return stalled(st.just(Answer(200, body, "text/event-stream")))
    return stalled(st.just(Answer(200, dumps(whole))))


Case = tuple[Request, Answer]
CASES: list[tuple[str, Callable[[bool], Request], str]] = [
    ("chat to openai", lambda stream: chat("gpt-stalling", stream), "openai"),
    ("chat to anthropic", lambda stream: chat("claude-stalling", stream), "anthropic"),
    ("messages to anthropic", lambda stream: messages("claude-stalling", stream), "anthropic"),
    ("messages to openai", lambda stream: messages("gpt-stalling", stream), "openai"),
    ("responses bridged", lambda stream: responses("gpt-stalling", stream, True), "openai"),
    (
        "responses bridged to anthropic",
        lambda stream: responses("claude-stalling", stream, True),
        "anthropic",
    ),
    ("responses native", lambda stream: responses("native-stalling", stream, True), "responses"),
]
"""Each call to a stalling upstream of a dialect, JSON or streamed."""


def cases(call: Callable[[bool], Request], dialect: str) -> st.SearchStrategy[Case]:
    return st.booleans().flatmap(
        lambda stream: st.tuples(st.just(call(stream)), stalls(dialect, stream))
    )


@pytest.fixture
def fresh(tracebacks: Tracebacks) -> Callable[[], None]:
    quiet_request_log()
    return lambda: start_over(tracebacks)


@pytest.mark.parametrize(("name", "call", "dialect"), CASES, ids=[case[0] for case in CASES])
def test_a_stalled_upstream_ends_in_a_timeout(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    fresh: Callable[[], None],
    name: str,
    call: Callable[[bool], Request],
    dialect: str,
) -> None:
    key = tenants["alice"].raw
    limited(tenants["alice"])
    upstream = FakeUpstream()

    @examples(30)
    @given(case=cases(call, dialect))
    def fuzz(case: Case) -> None:
        (path, options), answer = case
        upstream.start(answer, None)
        fresh()
        current = gateway_runtime(upstream, STALLING_CONFIG)
        reply = run(asyncio.wait_for(send(path, copy.deepcopy(options), key), HANG_UP_SECONDS))
        described = (reply.status, reply.body[-500:])
        status = told(path, reply)
        assert upstream.requests, "the upstream was asked"
        if reply.status != 200:
            assert status == 504, described  # the wait was the upstream's: a timeout
        current.ledger.flush()
        rows = list(UsageRecord.objects.all())
        assert len(rows) == 1, (len(rows), described)
        assert rows[0].request_id == reply.headers["x-request-id"]
        expected = 504 if status != 200 else 200  # a stream cut by the timeout: 504 in-band
        assert rows[0].status_code == expected, (rows[0].status_code, described)
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]

    fuzz()
