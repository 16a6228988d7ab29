"""Rate limits and budgets keep one account with the ledger when many calls run at the same
time: tests/test_limits_accounting.py's calls, made in batches at once through the real ASGI app
in process (both upstreams faked with ``httpx.MockTransport``, each call answered as planned for
it, found by the mark its prompt starts with), on memory and on Redis counters.

A batch of 5 to 16 calls mixes chat completions and ``/v1/messages``, JSON and streamed, on
models alone, with a fallback of the other dialect, or with a deployment of each dialect; each
attempt answers, fails with a status the router retries or the caller's (400), cuts its stream
short, or hangs until its client goes away. The limits on the tenant and its key are drawn in the
measure of the batch's calls, from room for one to room for all. An upstream never uses more
than the call asked for (its prompt within the gateway's estimate, its completion within
max_tokens), so that no call costs more than its reservation.

The order in which calls that run at once reach the counters is not determined, so no refusal
is predicted. Once the batch is settled:

1. each call has one ledger row, with the status its caller was told; a call refused by its
   limits (429 ``rate_limit_exceeded`` or ``insufficient_quota`` from the gateway, not from an
   upstream) reached no upstream, and every other call did;
2. each scope's counters hold what the rows of its admitted calls say: a request each, the tokens
   they record, what they cost; nothing reserved, no call in flight;
3. no limit is overshot: requests and tokens within the minute's, spending within the budget;
4. a batch with room for every call, its fallback included, has none of them refused.

The same holds of batches of ``/v1/responses`` (JSON and streamed; bridged to either chat
dialect, or native; stored or not; half of them continuing a response stored by a batch made
before, whose conversation the gateway replays to the upstream and counts in the call's prompt:
a short one, and ones of thousands of tokens, most of what such a call asks of its limits) and
of the media endpoints (embeddings, images, speech, transcriptions), on models alone or falling
back to one on the second upstream.

And a fallback is never refused for room its own call holds: K calls with room for exactly K,
all falling back at once, are all answered by their fallback.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest
from django.db.models import Sum
from hypothesis import given
from hypothesis import strategies as st
from support.asgi_replies import Reply, Tracebacks, send, told
from support.inprocess import ANTHROPIC_PATH
from support.limits_accounts import (
    BACKENDS,
    CHAT,
    FALLBACKS,
    FIRST,
    GONE,
    MODELS,
    RETRIED,
    SECOND,
    Accounts,
    Attempt,
    Limits,
    MarkedUpstreams,
    PlannedCall,
    ScopeLimit,
    Upstreams,
    answer_attempt,
    counted,
    mark,
    policies_on,
    start_over,
)
from support.limits_endpoint_calls import CONFIG as ENDPOINTS_CONFIG
from support.limits_endpoint_calls import (
    FAILING_FIRST,
    HOSTS,
    IMAGES,
    RESPONSES,
    SPEECH,
    EndpointCall,
    Stored,
    answer,
)
from support.limits_endpoint_calls import FALLBACKS as ENDPOINT_FALLBACKS
from support.limits_endpoint_calls import KINDS as ENDPOINT_KINDS
from support.limits_endpoint_calls import MODELS as ENDPOINT_MODELS
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import TenantKey, examples
from gateway import runtime
from gateway.limits.policy import Policy, to_units
from gateway.models import StoredResponse, UsageRecord

KINDS = [(CHAT, False), (CHAT, True), (ANTHROPIC_PATH, False), (ANTHROPIC_PATH, True)]
REFUSALS = ("rate_limit_exceeded", "insufficient_quota")
"""The codes of the gateway's own 429s (an upstream's 429 is ``rate_limit_exceeded`` too)."""

Run = Callable[[Coroutine[Any, Any, Any]], Any]
BatchCall = PlannedCall | EndpointCall


@pytest.fixture(params=[*BACKENDS, "redis, settled late"])
def backend(request: pytest.FixtureRequest) -> Callable[[], Policy]:
    """``backend()``: a policy on new counters: in memory, in Redis, and in Redis with its
    settlements landing after the admissions sent next (``LateSettlements``), in whatever order
    the calls at once reach them."""
    return policies_on(request.param, request)


# --- the calls ------------------------------------------------------------------------------------


def attempts(stream: bool, prompt: int, max_tokens: int) -> st.SearchStrategy[Attempt]:
    """An attempt's answer, for a call whose prompt the gateway estimates at ``prompt`` tokens:
    tokens within what the call asked for, so that it costs at most its reservation."""
    tokens = {"prompt": st.integers(1, prompt), "completion": st.integers(0, max_tokens)}
    answered = st.builds(Attempt, **tokens)
    failed = st.builds(Attempt, status=st.sampled_from([*RETRIED, 400]))
    hangs = st.builds(Attempt, hangs=st.just(True), events=st.integers(0, 3 if stream else 0))
    cut = st.builds(Attempt, cut=st.just(True), events=st.integers(1, 4), **tokens)
    return st.one_of(answered, answered, answered, failed, failed, hangs, cut if stream else failed)


@st.composite
def planned_call(draw: st.DrawFn, n: int) -> PlannedCall:
    """The batch's ``n``-th call (marked ``mark(n)``)."""
    path, stream = draw(st.sampled_from(KINDS))
    model = draw(st.sampled_from([*MODELS, *FALLBACKS]))  # falling back: the most to count
    chars, max_tokens = draw(st.integers(1, 400)), draw(st.integers(1, 300))
    call = PlannedCall(path, stream, model, chars, max_tokens, [], [], mark(n))
    some = attempts(stream, call.prompt, max_tokens)
    retried = st.builds(Attempt, status=st.sampled_from(RETRIED))
    # Half the calls fail every attempt on their first upstream (to their fallback).
    first = draw(st.lists(some, min_size=1, max_size=3) | retried.map(lambda one: [one]))
    return replace(call, first=first, second=draw(st.lists(some, min_size=1, max_size=2)))


def most(call: BatchCall) -> tuple[int, int]:
    """The most a call holds of the counters at any time: its tokens, and the larger of its
    reservations, on its model's prices and on its fallback's."""
    tokens, reserve = call.asks(call.model)
    if call.fallback_model is not None:
        reserve = max(reserve, call.asks(call.fallback_model)[1])
    return tokens, reserve


def endpoint_attempts(call: EndpointCall) -> st.SearchStrategy[Attempt]:
    """``attempts`` of a Responses or media call: tokens (a transcription's seconds) within
    what the call asked for, so that it costs at most its reservation; often its prompt's
    estimate whole (as a long conversation's prompt is, near enough)."""
    tokens = {"prompt": st.integers(0, call.most_used) | st.just(call.most_used)}
    tokens["completion"] = st.integers(0, call.max_tokens if call.path == RESPONSES else 0)
    streams = call.stream or call.path == SPEECH
    answered = st.builds(Attempt, **tokens)
    failed = st.builds(Attempt, status=st.sampled_from([*RETRIED, 400]))
    hangs = st.builds(Attempt, hangs=st.just(True), events=st.integers(0, 3 if streams else 0))
    cut = st.builds(Attempt, cut=st.just(True), events=st.integers(1, 3), **tokens)
    return st.one_of(answered, answered, answered, failed, hangs, cut if streams else failed)


@st.composite
def endpoint_call(draw: st.DrawFn, n: int, stored: Sequence[Stored] = ()) -> EndpointCall:
    """The batch's ``n``-th call of the Responses API or a media endpoint (marked
    ``mark(n)``); a response continues one of ``stored``, or none."""
    path, stream = draw(st.sampled_from(ENDPOINT_KINDS))
    continues = st.none() | st.sampled_from(stored) if stored else st.none()
    falling_back = list(ENDPOINT_FALLBACKS[path])
    models = [*ENDPOINT_MODELS[path], *falling_back, *falling_back]  # falling back: the most
    call = EndpointCall(
        path,
        stream,
        draw(st.sampled_from(models)),
        draw(st.integers(1, 4) if path == IMAGES else st.integers(1, 300)),
        draw(st.integers(1, 300)),
        draw(st.booleans()),
        [],
        store=path == RESPONSES and draw(st.booleans()),
        previous=draw(continues) if path == RESPONSES else None,
        mark=mark(n),
    )
    some = endpoint_attempts(call)
    # Some calls fail every attempt on their first upstream (to their fallback).
    failing = st.sampled_from(FAILING_FIRST).map(lambda one: [one])
    first = draw(st.lists(some, min_size=1, max_size=3) | failing)
    return replace(call, first=first, second=draw(st.lists(some, min_size=1, max_size=2)))


@st.composite
def batches(
    draw: st.DrawFn, call: Callable[[int], st.SearchStrategy[BatchCall]] = planned_call
) -> tuple[Limits, list[BatchCall]]:
    """Calls (``call``'s), and limits in the measure of the average call (``most``): none,
    room for one to all of them, or far more. The budgets are in 0.0001 USD, as the admin keeps
    them."""
    calls = [draw(call(n)) for n in range(draw(st.integers(5, 16)))]
    tokens = sum(most(call)[0] for call in calls) / len(calls)
    reserve = sum(most(call)[1] for call in calls) / len(calls)
    room = st.sampled_from([1, 2, 3, 5, 8, len(calls)])
    budget = st.none() | room.map(lambda f: math.ceil(reserve * f / 10_000)) | st.just(10**8)
    limits = {
        "rpm": draw(st.none() | st.integers(1, len(calls)) | st.just(10**6)),
        "tpm": draw(st.none() | room.map(lambda f: math.ceil(tokens * f)) | st.just(10**9)),
        "budget": draw(budget),
        "key_rpm": draw(st.none() | st.integers(1, len(calls)) | st.just(10**6)),
        "key_budget": draw(st.none() | budget),
    }
    return limits, calls


def room_for_all(calls: Sequence[BatchCall], scopes: list[ScopeLimit]) -> bool:
    """Whether every scope has room for every call at once, each holding its ``most``."""
    tokens = sum(most(call)[0] for call in calls)
    reserve = sum(most(call)[1] for call in calls)
    return all(
        (scope.rpm is None or len(calls) <= scope.rpm)
        and (scope.tpm is None or tokens <= scope.tpm)
        and (scope.budget is None or reserve <= scope.budget)
        for scope in scopes
    )


# --- a batch, and its account ---------------------------------------------------------------------


@dataclass(frozen=True)
class Made:
    """A call made, what its upstreams were asked, and what its caller was sent."""

    planned: BatchCall
    upstreams: Upstreams
    reply: Reply


def at_once(
    run: Run,
    current: runtime.Runtime,
    who: TenantKey,
    upstreams: MarkedUpstreams,
    calls: Sequence[BatchCall],
) -> list[Made]:
    """Make ``calls`` all at the same time, then let the policy settle them and the ledger
    write their rows."""
    each = upstreams.start([call.plans(upstreams.hosts) for call in calls])

    async def all_of_them() -> list[Reply]:
        return await asyncio.gather(
            *(
                send(call.path, call.options(), who.raw, leave=answers.leave)
                for call, answers in zip(calls, each, strict=True)
            )
        )

    replies = run(all_of_them())
    run(current.policy.drain())
    current.ledger.flush()
    return [Made(*made) for made in zip(calls, each, replies, strict=True)]


OPENINGS = [
    EndpointCall(RESPONSES, False, "gpt-alone", 40, 50, False, [], store=True),
    EndpointCall(RESPONSES, False, "claude-alone", 4_000, 300, False, [], store=True),
    EndpointCall(RESPONSES, False, "gpt-then-claude", 12_000, 300, False, [], store=True),
]
"""The responses stored for the batches' responses to continue: a short one, and ones of 1,000
and 3,000 tokens; the last is continued once more with 3,000 tokens of its own, a conversation
of 6,000 tokens in two turns. A continuation asks of its limits mostly for the conversation."""
UNLIMITED: Limits = dict.fromkeys(["rpm", "tpm", "budget", "key_rpm", "key_budget"])


def store_at_once(
    run: Run,
    current: runtime.Runtime,
    who: TenantKey,
    upstreams: MarkedUpstreams,
    calls: list[EndpointCall],
) -> list[Stored]:
    """Make ``calls`` (responses that store) at once, each answered with all it asked for: the
    responses they stored, in their order."""
    answered = [
        replace(call, first=[Attempt(prompt=call.prompt, completion=call.max_tokens)], mark=mark(n))
        for n, call in enumerate(calls)
    ]
    made = at_once(run, current, who, upstreams, answered)
    assert [one.reply.status for one in made] == [200] * len(made), made
    ids = [orjson.loads(one.reply.body)["id"] for one in made]
    return [(one, StoredResponse.objects.get(id=one).conversation) for one in ids]


def refused_by_limits(row: UsageRecord) -> bool:
    """A row of a call its limits refused: the gateway's 429, before any upstream attempt."""
    return row.status_code == 429 and row.error_type in REFUSALS and row.attempts == 0


def account(run: Run, policy: Policy, scopes: list[ScopeLimit], batch: list[Made]) -> list[Made]:
    """Hold every call of ``batch`` to its one ledger row, and the counters of ``scopes`` to
    the rows; the calls refused by their limits."""
    rows = {row.request_id: row for row in UsageRecord.objects.all()}
    assert len(rows) == len(batch), (len(rows), len(batch))
    refused = []
    for made in batch:
        planned, reply, asked = made.planned, made.reply, made.upstreams.asked
        request_id = reply.headers.get("x-request-id")
        if request_id is None:  # its client left before the answer began
            assert made.upstreams.hung and reply.status == 0, (planned, reply)
            continue
        row = rows[request_id]
        described = (planned, reply.status, reply.body[-300:], row.status_code, row.error_type)
        if refused_by_limits(row):
            assert (asked, told(planned.path, reply)) == ({}, 429), described
            refused.append(made)
            continue
        assert row.attempts == sum(asked.values()) > 0, (asked, described)
        if planned.fallback_model is not None:
            assert row.fallback == (SECOND in asked), described
            assert not row.fallback or planned.falls_back, described
        else:
            assert not row.fallback, described
        served = planned.fallback_model if row.fallback else planned.model
        assert row.served_model == served, described
        if made.upstreams.hung:  # its client went away
            assert (row.status_code, row.error_type) == GONE, described
            continue
        assert reply.headers["x-tollgate-model"] == row.served_model, described
        status = told(planned.path, reply)
        if status == 502 and reply.status == 200:  # a stream that failed once started
            assert 400 <= row.status_code != 500, described
        else:
            assert row.status_code == status, described
    told_ids = {made.reply.headers.get("x-request-id") for made in batch}
    left = [row for row in rows.values() if row.request_id not in told_ids]
    assert all((row.status_code, row.error_type) == GONE for row in left), left

    accounts = Accounts()
    for row in rows.values():
        if not refused_by_limits(row):
            accounts.count(row)
    total = UsageRecord.objects.aggregate(cost=Sum("cost_usd"))["cost"] or 0
    assert to_units(total) == accounts.spent
    for scope in scopes:
        held = run(counted(policy, scope.scope))
        assert held == accounts.settled_in(scope), (scope, accounts)
        assert scope.rpm is None or held.requests <= scope.rpm, (scope, held)
        assert scope.tpm is None or held.tokens <= scope.tpm, (scope, held)
        assert scope.budget is None or held.spent <= scope.budget, (scope, held)
    return refused


# --- the tests ------------------------------------------------------------------------------------


def test_calls_at_the_same_time_keep_one_account_with_the_ledger(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Run,
    tracebacks: Tracebacks,
    backend: Callable[[], Policy],
) -> None:
    alice = tenants["alice"]
    upstreams = MarkedUpstreams(answer_attempt, (FIRST, SECOND))
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a line per 4xx and 5xx

    @examples(120)
    @given(batches())
    def batch(limits_and_calls: tuple[Limits, list[BatchCall]]) -> None:
        limits, calls = limits_and_calls
        tracebacks.records.clear()
        current, scopes = start_over(alice, limits, gateway_runtime, upstreams, backend)
        hold_a_batch(run, tracebacks, current, scopes, alice, upstreams, calls)

    batch()


def test_responses_and_media_at_the_same_time_keep_one_account_with_the_ledger(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Run,
    tracebacks: Tracebacks,
    backend: Callable[[], Policy],
) -> None:
    """The batches of the test above, of calls to ``/v1/responses`` and the media endpoints;
    half the responses continue a conversation stored before the batches, with no limits (the
    ledger and the counters of each batch start without them): ``OPENINGS``, then a
    continuation of the last."""
    alice = tenants["alice"]
    upstreams = MarkedUpstreams(answer, HOSTS)
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a line per 4xx and 5xx
    current, _ = start_over(alice, UNLIMITED, gateway_runtime, upstreams, backend, ENDPOINTS_CONFIG)
    try:
        stored = store_at_once(run, current, alice, upstreams, OPENINGS)
        continued = replace(OPENINGS[-1], previous=stored[-1])
        stored += store_at_once(run, current, alice, upstreams, [continued])
    finally:
        run(current.policy.aclose())

    @examples(80)
    @given(batches(lambda n: endpoint_call(n, stored)))
    def batch(limits_and_calls: tuple[Limits, list[BatchCall]]) -> None:
        limits, calls = limits_and_calls
        tracebacks.records.clear()
        current, scopes = start_over(
            alice, limits, gateway_runtime, upstreams, backend, ENDPOINTS_CONFIG
        )
        hold_a_batch(run, tracebacks, current, scopes, alice, upstreams, calls)

    batch()


def hold_a_batch(
    run: Run,
    tracebacks: Tracebacks,
    current: runtime.Runtime,
    scopes: list[ScopeLimit],
    who: TenantKey,
    upstreams: MarkedUpstreams,
    calls: list[BatchCall],
) -> None:
    """Make ``calls`` at once and hold them to the ledger (``account``): with room for all of
    them, none refused, nor any fallback; nothing logged that should not be."""
    try:
        made = at_once(run, current, who, upstreams, calls)
        refused = account(run, current.policy, scopes, made)
        if room_for_all(calls, scopes):
            assert refused == [], refused
            for one in made:  # nor any fallback
                assert one.planned.falls_back <= (SECOND in one.upstreams.asked), one
        assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]
    finally:
        run(current.policy.aclose())


def whole_call(n: int) -> PlannedCall:
    """The ``n``-th of calls of every kind, falling back to a model of the other dialect at
    twice or half its prices (its first upstream answers 500), answered there with all it asked
    for; the larger of its reservations a whole number of 0.0001 USD (the budgets' measure)."""
    path, stream = KINDS[n % len(KINDS)]
    model = list(FALLBACKS)[n % len(FALLBACKS)]
    for chars in range(100, 200):
        for max_tokens in range(100, 200):
            call = PlannedCall(path, stream, model, chars, max_tokens, [], [], mark(n))
            if most(call)[1] % 10_000 == 0:
                answered = Attempt(prompt=call.prompt, completion=max_tokens)
                return replace(call, first=[Attempt(status=500)], second=[answered])
    raise AssertionError(f"no call of {model} on {path} costs a whole 0.0001 USD")


@pytest.mark.parametrize("room", ["tokens", "budget"])
def test_a_fallback_is_never_refused_for_room_its_own_call_holds(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Run,
    tracebacks: Tracebacks,
    backend: Callable[[], Policy],
    room: str,
) -> None:
    """K calls at once, with room for exactly K in their requests per minute and in their
    tokens per minute or their budgets (each call holding the larger of its two reservations),
    all fall back: every one is answered by its fallback. Its first admission is given back
    before the fallback's is counted; were it counted first (a release sent to Redis and not
    awaited, which may land after the admission sent next), the fallback would be refused for
    room its own call still held, and the caller told its first model's failure (502)."""
    alice = tenants["alice"]
    upstreams = MarkedUpstreams(answer_attempt, (FIRST, SECOND))
    logging.getLogger("django.request").setLevel(logging.CRITICAL)
    for k in (2, 3, 5, 8, 13) * 4:
        calls = [whole_call(n) for n in range(k)]
        tokens = sum(most(call)[0] for call in calls)
        budget = sum(most(call)[1] for call in calls) // 10_000
        limits = {"rpm": k, "tpm": None, "budget": None, "key_rpm": k, "key_budget": None}
        limits |= {"tpm": tokens} if room == "tokens" else {"budget": budget, "key_budget": budget}
        current, scopes = start_over(alice, limits, gateway_runtime, upstreams, backend)
        try:
            made = at_once(run, current, alice, upstreams, calls)
            told_them = [told(one.planned.path, one.reply) for one in made]
            assert told_them == [200] * k, [
                (one.reply.status, one.reply.body[-200:]) for one in made
            ]
            assert account(run, current.policy, scopes, made) == []
            assert all(one.upstreams.asked == {FIRST: 3, SECOND: 1} for one in made)
            assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]
        finally:
            run(current.policy.aclose())
