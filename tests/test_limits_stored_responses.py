"""A response continued from a stored one (``previous_response_id``) is held to its limits on
the whole prompt the gateway sends its upstream: the conversation it replays, tool calls and
their outputs included, then its own input. Calls go through the real ASGI app in process,
upstreams faked with ``httpx.MockTransport``, on memory and on Redis counters.

The admission's estimate is read from the x-ratelimit headers and held to the text the upstream
is sent (4 characters a token); a continuation whose client leaves before the answer is settled
on that estimate; one with room for its own input and not for the conversation is refused,
reaching no upstream and storing nothing; the counters equal the ledger after each call.
Sequences of stored and continued responses among other calls are in
tests/test_limits_endpoints.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
from django.db.models import Sum
from support.asgi_replies import Tracebacks, send
from support.limits_accounts import (
    GONE,
    Accounts,
    Attempt,
    Limits,
    Upstreams,
    backend_fixture,  # noqa: F401 - a fixture: backend
    counted,
    mark,
    set_limits,
)
from support.limits_endpoint_calls import CONFIG, HOSTS, RESPONSES, EndpointCall, answer
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import TenantKey
from gateway import runtime
from gateway.limits.policy import Policy, to_units
from gateway.models import StoredResponse, UsageRecord

TOOL_CALL = {"type": "function_call", "call_id": "call_1", "name": "read_file"}
TOOL_CALL["arguments"] = orjson.dumps({"path": "a" * 800}).decode()
TOOL_OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "o" * 2000}
OPENING = "x" * 400
"""A stored response's input: a message, then a tool call and its output (Codex's turns)."""


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("model", ["gpt-alone", "claude-alone", "gpt-native"])
def test_a_continued_response_counts_the_conversation_it_replays_tool_outputs_included(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    backend: Callable[[], Policy],
    model: str,
    stream: bool,
) -> None:
    """A response stored (a message, a tool call and its output in; an answer out), then
    continued on ``model`` with 40 characters of its own. The gateway replays the conversation
    to the upstream, so the continuation is admitted on a prompt of at least the conversation's
    text (the message, the call's arguments, the output: 4 characters a token; the tokens the
    x-ratelimit headers say are left), and one whose client leaves before the answer is settled
    on it. With tokens per minute that have room for its own input and the message, not for the
    tool call and its output, the continuation is refused: no upstream asked, nothing stored.
    The counters equal the ledger after each call."""
    alice = tenants["alice"]
    sent: list[bytes] = []

    def answer_and_keep(request: httpx.Request, attempt: Attempt) -> httpx.Response:
        sent.append(request.content)
        return answer(request, attempt)

    upstreams = Upstreams(answer_and_keep, HOSTS)
    logging.getLogger("django.request").setLevel(logging.CRITICAL)
    tpm = 10**6
    limits: Limits = {"rpm": None, "tpm": tpm, "budget": 10**4, "key_rpm": 100}
    limits["key_budget"] = None
    scopes = set_limits(alice, limits)
    current = gateway_runtime(upstreams, CONFIG)
    current.policy = backend()
    accounts = Accounts()

    def call(
        options: dict[str, Any], plans: tuple[list[Attempt], ...]
    ) -> tuple[dict[str, Any], UsageRecord, list[StoredResponse]]:
        """Make the call: its answer's headers, its row and what it stored; the counters are
        held to the ledger once it is settled."""
        before = set(StoredResponse.objects.values_list("id", flat=True))
        leave = upstreams.start(*plans)
        reply = run(send(RESPONSES, options, alice.raw, leave=leave))
        run(current.policy.drain())
        current.ledger.flush()
        row = UsageRecord.objects.order_by("id").last()
        assert row is not None
        if row.status_code != 429:
            accounts.count(row)
        for scope in scopes:
            assert run(counted(current.policy, scope.scope)) == accounts.settled_in(scope)
        stored = list(StoredResponse.objects.exclude(id__in=before))
        return dict(reply.headers), row, stored

    def continuing(*attempts: Attempt) -> tuple[dict[str, Any], UsageRecord, list[StoredResponse]]:
        return call(continued.options(), replace(continued, first=list(attempts)).plans(HOSTS))

    try:
        opening = [{"role": "user", "content": mark(0) + OPENING}, TOOL_CALL, TOOL_OUTPUT]
        body = {"model": "gpt-alone", "input": opening, "max_output_tokens": 50, "store": True}
        answered = [Attempt(prompt=100, completion=20)]
        _, row, [stored] = call({"json": body}, (answered, [], []))
        assert (row.status_code, stored.native) == (200, False)
        continued = EndpointCall(RESPONSES, stream, model, 40, 50, False, [], store=True)
        continued = replace(continued, previous=(stored.id, stored.conversation), mark=mark(1))
        own = len(continued.text)
        message = len(mark(0) + OPENING)
        tools = len(TOOL_CALL["arguments"]) + len(TOOL_OUTPUT["output"])
        at_least = math.ceil((message + tools + own) / 4)  # the text the upstream is sent

        sent.clear()
        headers, row, stored_now = continuing(Attempt(prompt=continued.prompt, completion=10))
        assert row.status_code == 200 and len(stored_now) == 1, (row.error_type, stored_now)
        left = int(headers["x-ratelimit-remaining-tokens"])
        estimate = tpm - (100 + 20) - left - continued.max_tokens  # less the first call's
        assert estimate >= at_least, (estimate, at_least)
        assert estimate == continued.prompt
        assert sent and all(mark(0).strip().encode() in content for content in sent)
        assert all(TOOL_OUTPUT["output"].encode() in content for content in sent)

        # Its client leaves before the answer: settled on the gateway's estimate of it all.
        _, row, stored_now = continuing(Attempt(hangs=True))
        assert (row.status_code, row.error_type, stored_now) == (*GONE, [])
        assert (row.prompt_tokens, row.usage_estimated) == (estimate, True)

        # Room for its own input and the message, not for the tool call and its output: refused
        # before any upstream.
        room = math.ceil((message + own) / 4) + 100 + continued.max_tokens
        limits["tpm"] = tpm = accounts.tokens + room
        scopes = set_limits(alice, limits)
        sent.clear()
        _, row, stored_now = continuing(Attempt(prompt=1, completion=1))
        assert (row.status_code, row.error_type) == (429, "rate_limit_exceeded")
        assert (upstreams.asked, sent, stored_now) == ({}, [], [])
        spent = UsageRecord.objects.aggregate(cost=Sum("cost_usd"))["cost"] or 0
        assert to_units(spent) == accounts.spent
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]
    finally:
        run(current.policy.aclose())
