"""A failed call's ledger row keeps the message its caller was told: redacted of upstream keys
and credentials, cut to 500 characters, through the journal and its replay."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from conftest import TenantKey, ledger_rows
from gateway.api.errors import error_response
from gateway.calls.pipeline import Call
from gateway.calls.responses import _failure_message
from gateway.models import ERROR_MESSAGE_LENGTH, UsageRecord
from gateway.tenants.auth import Caller
from gateway.usage.endpoints import Endpoint
from gateway.usage.ledger import LedgerWriter
from gateway.usage.ledger_files import HeldFile, encode
from providers.redaction import REDACTED
from providers.types import Usage

HELLO = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}


async def post(who: TenantKey, body: dict[str, object]) -> bytes:
    response = await AsyncClient().post(
        "/v1/chat/completions",
        orjson.dumps(body),
        content_type="application/json",
        headers=who.headers,
    )
    if response.streaming:
        return b"".join([part async for part in response.streaming_content])
    return response.content


async def test_a_refused_call_keeps_the_upstreams_message_redacted_and_cut(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        said = f"bad request from {request.headers['authorization']}: " + "why " * 300
        return httpx.Response(400, json={"error": {"message": said}})

    current = gateway_runtime(refuse)
    await post(tenants["alice"], HELLO)
    [row] = await sync_to_async(ledger_rows)(current)
    assert (row.status_code, row.error_type) == (400, "upstream_rejected")
    assert row.error_message.startswith(f"bad request from Bearer {REDACTED}: why why")
    assert len(row.error_message) == ERROR_MESSAGE_LENGTH
    assert "sk-upstream-secret" not in row.error_message


async def test_a_stream_that_fails_mid_way_keeps_its_message(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    def fail_mid_stream(request: httpx.Request) -> httpx.Response:
        delta = {"index": 0, "delta": {"content": "a"}, "finish_reason": None}
        chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [delta]}
        failure = {"error": {"message": "overloaded (key sk-upstream-secret)"}}
        body = b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(failure) + b"\n\n"
        return httpx.Response(200, content=body)

    current = gateway_runtime(fail_mid_stream)
    text = await post(tenants["bob"], {**HELLO, "stream": True})
    assert b"overloaded" in text
    [row] = await sync_to_async(ledger_rows)(current)
    assert (row.status_code, row.stream) == (502, True)
    assert row.error_message == (
        f"The upstream provider 'fake' failed mid-stream: overloaded (key {REDACTED})"
    )


def test_the_row_redacts_a_message_that_no_upstream_classified(
    tenants: dict[str, TenantKey], gateway_runtime
) -> None:
    """Defence in depth: whatever error a call ends with, its message is redacted again."""
    current = gateway_runtime(lambda request: httpx.Response(200))
    alice = tenants["alice"]
    caller = Caller(alice.tenant.pk, "alice", alice.key.pk, alice.key.prefix)
    call = Call(current, caller, Endpoint.CHAT_COMPLETIONS, error_response)
    call.record(Usage(), 500, "internal_error", message="failed with Bearer tok-123456789")
    [row] = ledger_rows(current)
    assert row.error_message == f"failed with Bearer {REDACTED}"
    call_ok = Call(current, caller, Endpoint.CHAT_COMPLETIONS, error_response)
    call_ok.record(Usage(prompt_tokens=1, completion_tokens=1), 200)
    assert ledger_rows(current)[-1].error_message == ""


def test_the_journal_keeps_the_message_and_older_lines_without_it_still_replay(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    bob = tenants["bob"]
    base = {
        "created_at": "2026-03-14T10:00:00+00:00",
        "tenant_id": bob.tenant.pk,
        "api_key_id": bob.key.pk,
        "requested_model": "gpt-test",
        "cost_usd": "0",
        "status_code": 502,
        "error_type": "upstream_unavailable",
        "latency_ms": 7,
    }
    spool = HeldFile(tmp_path / "ledger", "spool")
    spool.append(encode({**base, "request_id": "req_new", "error_message": "upstream down"}))
    spool.append(encode({**base, "request_id": "req_old"}))  # a line from before the column
    spool.release()
    assert LedgerWriter(tmp_path / "ledger", autostart=False).replay() == 2
    messages = dict(UsageRecord.objects.values_list("request_id", "error_message"))
    assert messages == {"req_new": "upstream down", "req_old": ""}


def test_a_native_response_failed_event_gives_its_message() -> None:
    failed = {"type": "response.failed", "response": {"error": {"message": "server broke"}}}
    raw = b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n"
    assert _failure_message(raw) == "server broke"
    assert _failure_message(b"event: response.failed\ndata: {}\n\n") == ""
    assert _failure_message(b"event: response.failed\ndata: nope\n\n") == ""
