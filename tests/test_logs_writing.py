"""Writing the log (issue #17): on the event loop, request lines are held back and written several
at a time, in order, whole lines and at most PIPE_BUF bytes a write; every other record is
written at once, after them; nothing held is left behind when the runtime closes or the process
exits; and the lines are the ones logging's records made before (``gateway.telemetry.logs``)."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ROOT, TenantKey, start_gateway
from gateway.telemetry import logs
from gateway.telemetry.logs import (
    ConsoleHandler,
    JsonFormatter,
    RequestLine,
    TextFormatter,
    log_request_line,
    requests_log,
)
from tollgate.asgi import application

FIELDS = {
    "request_id": "req_1",
    "tenant_id": 1,
    "tenant": "zoë",
    "key_prefix": "tg-abcdefghi",
    "endpoint": "chat.completions",
    "model": "gpt-test",
    "deployment": "fake/fake-gpt",
    "status": 200,
    "error_type": "",
    "latency_ms": 12,
    "first_chunk_ms": None,
    "prompt_tokens": 11,
    "completion_tokens": 5,
    "cost_usd": 0.0000195,
    "attempts": 1,
    "fallback": False,
}


def refused(number: int, tenant: str = "alice") -> dict[str, Any]:
    """A request line's fields as ``request_answered`` makes them, numbered."""
    return {
        "request_id": f"req_{number}",
        "method": "GET",
        "path": "/v1/models",
        "status": 401,
        "error_type": "invalid_api_key",
        "latency_ms": 0,
        "tenant": tenant,
        "key_prefix": "tg-abcdefghi",
    }


class Writes:
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in "".join(self.writes).splitlines()]


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    """A JSON ``ConsoleHandler`` as the request log's only handler (as the root's is in a
    gateway; pytest keeps handlers of its own on the root), writing to a ``Writes``."""
    stream = Writes()
    handler = ConsoleHandler(stream)
    handler.setFormatter(JsonFormatter())
    monkeypatch.setattr(requests_log, "handlers", [handler])
    monkeypatch.setattr(requests_log, "propagate", False)
    yield stream
    handler.close()


def test_a_request_line_made_without_a_record_is_the_line_its_record_makes() -> None:
    created = 1764464809.039
    line = RequestLine(FIELDS)
    rec = requests_log.makeRecord(requests_log.name, logging.INFO, __file__, 1, line, (), None)
    rec.created, rec.msecs = created, 39
    before = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")  # the old text
    text, json_formatter = TextFormatter(), JsonFormatter()
    assert text.request_line(line, created) == text.format(rec) == before.format(rec)
    assert json_formatter.request_line(line, created) == json_formatter.format(rec)
    entry = json.loads(json_formatter.request_line(line, created))
    assert list(entry) == ["time", "level", "logger", "message", *FIELDS]
    assert entry["time"] == "2025-11-30T01:06:49.039Z" and entry["tenant"] == "zoë"


async def test_request_lines_on_the_event_loop_are_held_and_written_in_order_in_whole_lines(
    console: Writes,
) -> None:
    """Each write is whole lines of at most PIPE_BUF bytes (counted in bytes, not characters),
    so that workers sharing a pipe never split each other's lines; a longer line goes alone."""
    tenants = ["é" * 150] * 60
    tenants[30] = "x" * (select.PIPE_BUF + 10)
    for number, tenant in enumerate(tenants):
        log_request_line(refused(number, tenant))
    assert 0 < len(console.lines()) < 60, "the last lines are held"
    requests_log.handlers[0].flush()
    assert [line["request_id"] for line in console.lines()] == [f"req_{n}" for n in range(60)]
    assert len(console.writes) < 60 / 5
    for write in console.writes:
        assert write.endswith("\n")
        if tenants[30] not in write:
            assert len(write.encode()) <= select.PIPE_BUF
    (long_write,) = [w for w in console.writes if tenants[30] in w]
    assert long_write.count("\n") == 1


async def test_a_warning_or_another_loggers_record_is_written_at_once_after_the_held_lines(
    console: Writes,
) -> None:
    log_request_line(refused(1))
    log_request_line(refused(2))
    assert console.writes == []
    requests_log.warning("request log: slow disk")
    (write,) = console.writes
    messages = [json.loads(line)["message"] for line in write.splitlines()]
    assert messages == ["request", "request", "request log: slow disk"]
    log_request_line(refused(3))
    assert len(console.writes) == 1
    requests_log.handlers[0].handle(logging.makeLogRecord({"name": "tollgate", "msg": "up"}))
    assert [line["message"] for line in console.lines()[3:]] == ["request", "up"]
    assert len(console.writes) == 2


async def test_a_held_line_is_written_hold_seconds_later_with_no_line_after_it(
    console: Writes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "HOLD_SECONDS", 0.01)
    log_request_line(refused(1))
    await asyncio.sleep(0)
    assert console.writes == []
    await asyncio.sleep(0.5)
    assert [line["request_id"] for line in console.lines()] == ["req_1"]


def test_off_the_event_loop_a_request_line_is_written_at_once(console: Writes) -> None:
    log_request_line(refused(1))
    assert [line["request_id"] for line in console.lines()] == ["req_1"]


def test_the_text_format_writes_the_same_held_lines(console: Writes) -> None:
    handler = requests_log.handlers[0]
    handler.setFormatter(TextFormatter())

    async def two_lines() -> None:
        log_request_line(refused(1))
        log_request_line(refused(2))
        assert console.writes == []

    asyncio.run(two_lines())
    handler.flush()
    (write,) = console.writes
    assert [line.split(" INFO tollgate.requests: ")[1] for line in write.splitlines()] == [
        "req_1 401 invalid_api_key GET /v1/models 0 ms tenant alice key tg-abcdefghi",
        "req_2 401 invalid_api_key GET /v1/models 0 ms tenant alice key tg-abcdefghi",
    ]


def test_a_filter_on_the_request_log_still_sees_every_line(
    console: Writes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line skips logging's record only when nothing could drop or change it."""

    def drop_even(record: logging.LogRecord) -> bool:
        return not record.msg.fields["request_id"].endswith(("0", "2"))

    monkeypatch.setattr(requests_log, "filters", [drop_even])
    for number in range(4):
        log_request_line(refused(number))
    assert [line["request_id"] for line in console.lines()] == ["req_1", "req_3"]


async def test_the_lifespans_shutdown_writes_the_held_lines_then_each_line_at_once(
    console: Writes, gateway_runtime: Any
) -> None:
    current = gateway_runtime(lambda request: httpx.Response(200))
    current.observers = (logs.RequestLog(),)
    log_request_line(refused(1))
    assert console.writes == []
    messages = [{"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.shutdown.complete"}]
    assert [line["request_id"] for line in console.lines()] == ["req_1"]
    log_request_line(refused(2))  # a stream that outlived the shutdown, say
    assert [line["request_id"] for line in console.lines()] == ["req_1", "req_2"]


EXITS_WITH_LINES_HELD = """
import asyncio, logging, os
from gateway.telemetry.logs import ConsoleHandler, JsonFormatter, requests_log, log_request_line

handler = ConsoleHandler()
handler.setFormatter(JsonFormatter())
requests_log.addHandler(handler)
requests_log.setLevel(logging.INFO)

async def serve():
    for number in range(3):
        log_request_line({"request_id": f"req_{number}", "status": 200})

asyncio.run(serve())  # the loop is closed before the lines' flush was due
os.write(2, b"exiting\\n")
"""


def test_a_process_that_exits_without_lifespan_writes_its_held_lines() -> None:
    """logging's exit handler (``logging.shutdown``) flushes the handler."""
    done = subprocess.run(
        [sys.executable, "-c", EXITS_WITH_LINES_HELD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, *lines = done.stderr.splitlines()
    assert first == "exiting", "the lines were held until the exit"
    assert [json.loads(line)["request_id"] for line in lines] == ["req_0", "req_1", "req_2"]


@pytest.mark.e2e
def test_every_request_line_of_two_workers_reaches_the_log_whole_after_a_stop(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    server = start_gateway(tmp_path, fake_upstream, workers=2)
    try:
        answered = [
            httpx.get(server.base_url + "/v1/models", headers=tenants["alice"].headers)
            for _ in range(40)
        ]
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines()]
    logged = [line["request_id"] for line in lines if line["logger"] == "tollgate.requests"]
    ids = sorted(response.headers["x-request-id"] for response in answered)
    assert sorted(i for i in logged if i in ids) == ids  # (the others: start_gateway's probes)
