"""Rate limits and budgets keep their accounts whatever a call goes through: a derandomized
property test of sequences of calls from a tenant with requests per minute, tokens per minute
and budgets, through the real ASGI app in process (both upstreams faked with
``httpx.MockTransport``), on memory and on Redis counters.

A sequence mixes chat completions, ``/v1/messages`` (JSON and streamed) and its token counts, on
models alone, with a fallback of the other dialect on another upstream, or with a deployment of
each dialect. Each attempt's upstream answers (tokens drawn), fails with a status the router
retries (500, 429, 529) or the caller's (400), cuts its stream short, or hangs until the client
goes away (before the answer, or mid-stream). The limits are drawn in the measure of the first
call, so that most calls pass and some are refused.

Each call is held to a model of the counters (``Accounts``): refused exactly when they should
refuse it (a fallback admitted on its own tokens and cost in place of its first model's, its
request counted once; a token count held to no budget), answered by the model that served it,
and recorded in one ledger row (none for a token count) whose status is what its caller was
told. Once the sequence is settled, the counters say what the ledger says: a request per call
admitted, the tokens its row records, its cost spent, nothing reserved, no call in flight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from django.db.models import Sum
from hypothesis import given
from hypothesis import strategies as st
from support.asgi_replies import Tracebacks, send, told
from support.inprocess import ANTHROPIC_PATH
from support.limits_accounts import (
    CHAT,
    COUNT,
    FALLBACKS,
    FIRST,
    GONE,
    MODELS,
    RETRIED,
    SECOND,
    Accounts,
    Attempt,
    Limits,
    PlannedCall,
    ScopeLimit,
    Upstreams,
    answer_attempt,
    backend_fixture,  # noqa: F401 - a fixture: backend
    counted,
    start_over,
)
from support.redis_db import redis_url  # noqa: F401 - a fixture

from conftest import TenantKey, examples
from gateway import runtime
from gateway.limits.policy import Policy, to_units
from gateway.models import UsageRecord

# --- the calls ------------------------------------------------------------------------------------


def attempts(stream: bool) -> st.SearchStrategy[Attempt]:
    tokens = {"prompt": st.integers(1, 120), "completion": st.integers(0, 400)}
    answered = st.builds(Attempt, **tokens)
    failed = st.builds(Attempt, status=st.sampled_from([*RETRIED, 400]))
    hangs = st.builds(Attempt, hangs=st.just(True), events=st.integers(0, 3 if stream else 0))
    cut = st.builds(Attempt, cut=st.just(True), events=st.integers(1, 4), **tokens)
    return st.one_of(answered, answered, answered, failed, failed, hangs, cut if stream else failed)


def planned_calls() -> st.SearchStrategy[PlannedCall]:
    def plan(path: str, stream: bool) -> st.SearchStrategy[PlannedCall]:
        some = st.lists(attempts(stream), min_size=1, max_size=3)
        retried = st.builds(Attempt, status=st.sampled_from(RETRIED))
        return st.builds(
            PlannedCall,
            path=st.just(path),
            stream=st.just(stream),
            model=st.sampled_from([*MODELS, *FALLBACKS]),  # falling back: the most to count
            chars=st.integers(1, 400),
            max_tokens=st.integers(1, 300),
            # Half the calls fail every attempt on their first upstream (to their fallback).
            first=st.one_of(some, retried.map(lambda attempt: [attempt])),
            second=st.lists(attempts(stream), min_size=1, max_size=2),
        )

    paths = [(CHAT, False), (CHAT, True), (ANTHROPIC_PATH, False), (ANTHROPIC_PATH, True)]
    return st.sampled_from([*paths, (COUNT, False)]).flatmap(lambda kind: plan(*kind))


# --- the limits, and what the counters should hold ------------------------------------------------


@st.composite
def sequences(draw: st.DrawFn) -> tuple[Limits, list[PlannedCall]]:
    """Calls, and limits in the measure of the first: none, room for one to four calls like it
    (a fallback at twice or half its prices then finds room for itself, for itself and its first
    model's reservation, or none), or far more; requests per minute from one call up. The
    budgets are in 0.0001 USD, as the admin keeps them; the key may have its own."""
    calls = draw(st.lists(planned_calls(), min_size=1, max_size=6))
    tokens, reserve = calls[0].asks(calls[0].model)
    room = st.sampled_from([1, 1.5, 2, 2.5, 3, 4])
    budget = st.none() | room.map(lambda f: math.ceil(reserve * f / 10_000)) | st.just(10**8)
    limits = {
        "rpm": draw(st.none() | st.integers(1, 5) | st.just(10**6)),
        "tpm": draw(st.none() | room.map(lambda f: math.ceil(tokens * f)) | st.just(10**9)),
        "budget": draw(budget),
        "key_rpm": draw(st.none() | st.integers(1, 6)),
        "key_budget": draw(st.none() | budget),
    }
    return limits, calls


# --- the test -------------------------------------------------------------------------------------


def test_the_counters_hold_what_the_ledger_says(
    tenants: dict[str, TenantKey],
    gateway_runtime: Callable[..., runtime.Runtime],
    run: Callable[[Coroutine[Any, Any, Any]], Any],
    tracebacks: Tracebacks,
    backend: Callable[[], Policy],
) -> None:
    alice = tenants["alice"]
    upstreams = Upstreams(answer_attempt, (FIRST, SECOND))
    logging.getLogger("django.request").setLevel(logging.CRITICAL)  # a line per 4xx and 5xx

    def one_call(
        current: runtime.Runtime, planned: PlannedCall, scopes: list[ScopeLimit], accounts: Accounts
    ) -> None:
        """Make the call, hold what it did to ``accounts``, and count it there."""
        leave = upstreams.start(planned.first, planned.second)
        reply = run(send(planned.path, {"json": planned.body()}, alice.raw, leave=leave))
        run(current.policy.drain())  # settled before the next call, as test_policy's calls are
        current.ledger.flush()
        rows = list(UsageRecord.objects.order_by("id")[accounts.rows :])
        assert len(rows) == (planned.path != COUNT), rows  # a token count keeps none
        accounts.rows += len(rows)
        row = rows[0] if rows else None
        described = (planned, reply.status, reply.body[-300:], row and row.error_type)
        spends = planned.path != COUNT  # a token count is held to no budget
        refused = accounts.refusal(scopes, *planned.asks(planned.model), spends=spends)
        if refused is not None:
            assert (upstreams.asked, reply.status) == ({}, 429), described
            assert row is None or (row.status_code, row.error_type) == (429, refused), described
            return
        fallback = FALLBACKS.get(planned.model, "")
        fell_back = planned.falls_back and not accounts.refusal(
            scopes, *planned.asks(fallback), request=False, spends=spends
        )
        serving = fallback if fell_back else planned.model
        if row is not None:  # a call to a model, which its upstreams answer (a count may not)
            if fallback:
                assert (SECOND in upstreams.asked) == fell_back, described
            what = (row.served_model, row.fallback, row.attempts)
            assert what == (serving, fell_back, sum(upstreams.asked.values())), described
        if upstreams.hung:  # its client went away
            assert row is None or (row.status_code, row.error_type) == GONE, described
        else:
            status = told(planned.path, reply)
            assert reply.headers["x-tollgate-model"] == serving, described
            if row is not None:
                assert row.request_id == reply.headers["x-request-id"], described
                if status == 502 and reply.status == 200:  # a stream that failed once started
                    assert 400 <= row.status_code != 500, described
                else:
                    assert row.status_code == status, described
        accounts.count(row)

    @examples(300)
    @given(sequences())
    def sequence(limits_and_calls: tuple[Limits, list[PlannedCall]]) -> None:
        limits, calls = limits_and_calls
        tracebacks.records.clear()
        current, scopes = start_over(alice, limits, gateway_runtime, upstreams, backend)
        accounts = Accounts()
        try:
            for planned in calls:
                one_call(current, planned, scopes, accounts)
            rows = UsageRecord.objects.all()
            assert rows.count() == accounts.rows
            assert to_units(rows.aggregate(cost=Sum("cost_usd"))["cost"] or 0) == accounts.spent
            for scope in scopes:
                held = run(counted(current.policy, scope.scope))
                assert held == accounts.settled_in(scope), (scope, accounts)
            assert not tracebacks.records, [record.getMessage() for record in tracebacks.records]
        finally:
            run(current.policy.aclose())

    sequence()
