"""Logs (issue #15): every record one JSON line with ``TOLLGATE_LOG_FORMAT=json`` (uvicorn's
too), and one request line per API request, with the call's facts and none of its secrets.
End to end, every gateway the suite starts logs JSON, scanned for prompts and keys
(``support.gateway_logs``)."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import threading
import warnings
from copy import deepcopy
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from support.gateway_logs import check_gateway_log
from support.inprocess import api_client

from conftest import ROOT, TEST_SERVER, TenantKey, ledger_rows, start_gateway
from gateway import runtime
from gateway.telemetry.logs import JsonFormatter, RequestLine, RequestLog, configure_logging

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "fake-gpt",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ANSWER"}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 3},
    },
}
PROMPT = "PROMPT-TEXT-never-logged"


def record(message: object, *args: object, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("tollgate.test", logging.ERROR, __file__, 1, message, args, exc_info)


# --- the JSON formatter -------------------------------------------------------------------------


def test_every_record_is_one_json_line_with_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("two\nlines, %s %d", "arg", 3))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "two\nlines, arg 3"
    assert entry["level"] == "ERROR" and entry["logger"] == "tollgate.test"
    assert entry["time"].endswith("Z") and entry["time"][10] == "T" and len(entry["time"]) == 24


def test_an_exception_is_one_field_of_the_line_not_a_multiline_traceback() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        line = JsonFormatter().format(record("it failed", exc_info=sys.exc_info()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "it failed"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].rstrip().endswith("ValueError: bad value")


def test_a_lone_surrogate_or_an_odd_object_still_makes_a_json_line() -> None:
    line = JsonFormatter().format(record("model %s, cost %s", "bad\udc80name", Decimal("0.1")))
    entry = json.loads(line)
    assert entry["message"] == "model bad\udc80name, cost 0.1"


def test_a_request_line_gives_its_fields_to_json_and_a_short_line_to_text() -> None:
    fields = {
        "request_id": "req_1",
        "tenant": "alice",
        "key_prefix": "tg-abcdefghi",
        "endpoint": "chat.completions",
        "model": "gpt-test",
        "deployment": "fake/fake-gpt",
        "status": 200,
        "error_type": "",
        "latency_ms": 12,
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "cost_usd": 0.0000195,
        "attempts": 2,
        "fallback": False,
    }
    message = RequestLine(fields)
    entry = json.loads(JsonFormatter().format(record(message)))
    assert entry["message"] == "request"
    assert {key: entry[key] for key in fields} == fields
    assert str(message) == (
        "req_1 200 chat.completions gpt-test -> fake/fake-gpt 12 ms tokens 11+5 $0.0000195 "
        "attempts 2 tenant alice key tg-abcdefghi"
    )


def test_a_text_request_line_escapes_what_is_not_printable() -> None:
    """The path and the model are the caller's: a newline in either was written as it came, and
    the text log showed a line the gateway never wrote (a NUL went out raw too)."""
    fields = {"request_id": "req_1", "status": 404, "method": "GET", "latency_ms": 1}
    path = "/v1/responses/x\n2026-12-01 00:00:00,000 INFO tollgate.requests: forged\x00"
    line = str(RequestLine({**fields, "path": path}))
    assert line == (
        "req_1 404 GET /v1/responses/x\\n2026-12-01 00:00:00,000 INFO tollgate.requests: "
        "forged\\x00 1 ms"
    )
    assert line.isprintable()


# --- configure_logging: uvicorn's handlers, warnings, uncaught exceptions ----------------------


@pytest.fixture
def json_logging(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Configure logging as a gateway under ``uvicorn`` with ``TOLLGATE_LOG_FORMAT=json`` does;
    the test's own configuration is back afterwards."""
    from uvicorn.config import LOGGING_CONFIG

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    settings.TOLLGATE_LOG_FORMAT = "json"
    config: dict[str, Any] = deepcopy(django_settings.LOGGING)
    config["formatters"]["console"] = django_settings.LOG_FORMATTERS["json"]

    def configure(access_log: bool) -> None:
        logging.config.dictConfig(LOGGING_CONFIG)  # what uvicorn does before importing the app
        if not access_log:  # --no-access-log
            logging.getLogger("uvicorn.access").handlers = []
        configure_logging(config)

    yield configure
    logging.captureWarnings(False)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
    logging.config.dictConfig(django_settings.LOGGING)


def formatted_by(logger: logging.Logger, message: str) -> list[str]:
    handlers = logger.handlers or logging.getLogger("uvicorn").handlers
    rec = logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None)
    return [handler.format(rec) for handler in handlers]


def test_uvicorns_own_handlers_write_json_and_no_access_log_stays_off(json_logging: Any) -> None:
    json_logging(access_log=False)
    lines = formatted_by(logging.getLogger("uvicorn.error"), "Started server process [1]")
    assert [json.loads(line)["message"] for line in lines] == ["Started server process [1]"]
    assert logging.getLogger("uvicorn.access").handlers == []  # --no-access-log is kept
    root = logging.getLogger().handlers
    assert [type(h.formatter) for h in root if h.formatter] == [JsonFormatter]


def test_uvicorns_access_log_when_on_writes_json(json_logging: Any) -> None:
    json_logging(access_log=True)
    access = logging.getLogger("uvicorn.access")
    (line,) = formatted_by(access, '127.0.0.1:5 - "GET /v1/models HTTP/1.1" 200')
    assert json.loads(line)["logger"] == "uvicorn.access"


def test_warnings_and_uncaught_exceptions_go_through_logging(
    json_logging: Any, caplog: pytest.LogCaptureFixture
) -> None:
    json_logging(access_log=False)
    logging.getLogger().addHandler(caplog.handler)  # the configuration replaced the root's
    with caplog.at_level(logging.WARNING):
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        thread = threading.Thread(target=lambda: 1 / 0, name="worker-7")
        thread.start()
        thread.join()
    (warning,) = [r for r in caplog.records if r.name == "py.warnings"]
    assert "DeprecationWarning: an old API" in warning.getMessage()
    messages = [r.getMessage() for r in caplog.records if r.name == "tollgate"]
    assert messages == ["uncaught exception", "uncaught exception in thread worker-7"]
    thread_record = next(r for r in caplog.records if r.getMessage().endswith("worker-7"))
    assert thread_record.exc_info is not None and thread_record.exc_info[0] is ZeroDivisionError


@pytest.mark.e2e
def test_make_serves_json_with_workers_writes_json_from_the_supervisor_too(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    """With several workers, uvicorn's supervisor never imports the app: ``make serve`` gives
    it tollgate/uvicorn_json_logging.json when TOLLGATE_LOG_FORMAT=json."""
    if TEST_SERVER != "uvicorn":
        pytest.skip("uvicorn's supervisor")
    log_config = "tollgate/uvicorn_json_logging.json"
    assert log_config in (ROOT / "Makefile").read_text()
    server = start_gateway(
        tmp_path, fake_upstream, server_args=("--log-config", log_config), workers=2
    )
    try:
        response = httpx.get(server.base_url + "/v1/models", headers=tenants["alice"].headers)
        assert response.status_code == 200
    finally:
        server.stop()
    assert check_gateway_log(server.log_path) > 5
    messages = [json.loads(line)["message"] for line in server.log_path.read_text().splitlines()]
    assert any(m.startswith("Started parent process") for m in messages)
    assert sum(m == "Application startup complete." for m in messages) == 2


def test_the_end_to_end_log_check_finds_a_prompt_a_key_and_a_line_that_is_not_json(
    tmp_path: Path,
) -> None:
    log = tmp_path / "gateway.log"
    clean = '{"time": "t", "level": "INFO", "logger": "tollgate", "message": "up"}\n'
    log.write_text(clean + '{"time": "t", "level": "INFO", "logger": "x", "message": "cut')
    assert check_gateway_log(log) == 1  # a last line cut short is not parsed
    for bad in (
        clean.replace("up", "Say hello."),
        clean.replace("up", "key tg-" + "A" * 43),
        clean.replace("up", "Bearer sk-upstream-secret"),
        "Traceback (most recent call last):\n",
        '{"message": "no time, level or logger"}\n',
    ):
        log.write_text(clean + bad)
        with pytest.raises((AssertionError, json.JSONDecodeError)):
            check_gateway_log(log)


# --- the request line of a call -----------------------------------------------------------------


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The request-log records captured, as the JSON lines they would be."""
    lines = []
    for rec in caplog.records:
        if rec.name == "tollgate.requests":
            line = JsonFormatter().format(rec)
            lines.append(json.loads(line))
    return lines


def chat(who: TenantKey, **body: Any) -> dict[str, Any]:
    return {
        "json": {"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}], **body},
        "headers": {"Authorization": f"Bearer {who.raw}"},
    }


async def test_a_calls_request_line_has_its_facts_and_no_prompt_answer_or_key(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    current: runtime.Runtime = gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    current.observers = (RequestLog(),)
    alice = tenants["alice"]
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            response = await client.post("/v1/chat/completions", **chat(alice))
    assert response.status_code == 200
    (line,) = request_lines(caplog)
    (row,) = await sync_to_async(ledger_rows)(current)
    assert line["request_id"] == response.headers["x-request-id"] == row.request_id
    assert line["tenant_id"] == alice.tenant.pk and line["tenant"] == "alice"
    assert line["key_id"] == alice.key.pk and line["key_prefix"] == alice.key.prefix
    expected = {
        "endpoint": "chat.completions",
        "model": "gpt-test",
        "served_model": "gpt-test",
        "provider": "fake",
        "deployment": "fake/fake-gpt",
        "status": 200,
        "error_type": "",
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "cache_read_tokens": 3,
        "attempts": 1,
        "fallback": False,
        "stream": False,
        "first_chunk_ms": None,
    }
    assert {key: line[key] for key in expected} == expected
    assert line["cost_usd"] == float(row.cost_usd) > 0
    assert line["latency_ms"] == row.latency_ms and 0 <= line["upstream_ms"] <= line["latency_ms"]
    text = caplog.records[-1].getMessage()
    for secret in (PROMPT, "ANSWER", alice.raw, "sk-upstream-secret"):
        assert secret not in json.dumps(line) and secret not in text


async def test_a_failed_and_retried_stream_says_so(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    answers = [httpx.Response(503, json={"error": {"message": "busy"}})]

    def upstream(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop()
        body = (
            b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[{"index":0,"delta":{"content":"ANSWER"}}]}\n\n'
            b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
            b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\n'
            b"data: [DONE]\n\n"
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    current = gateway_runtime(upstream)
    current.observers = (RequestLog(),)
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            response = await client.post(
                "/v1/chat/completions", **chat(tenants["bob"], stream=True)
            )
    assert response.status_code == 200 and "ANSWER" in response.text
    (line,) = request_lines(caplog)
    assert line["stream"] is True and line["attempts"] == 2 and line["status"] == 200
    assert line["prompt_tokens"] == 7 and line["completion_tokens"] == 1
    assert line["first_chunk_ms"] is not None and line["first_chunk_ms"] <= line["latency_ms"]
    assert "ANSWER" not in json.dumps(line)


async def test_a_refused_call_has_its_error_type(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    current = gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    current.observers = (RequestLog(),)
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            body = chat(tenants["alice"])
            body["json"]["model"] = "no-such-model"
            response = await client.post("/v1/chat/completions", **body)
    assert response.status_code == 404
    (line,) = request_lines(caplog)
    assert (line["status"], line["error_type"], line["model"]) == (
        404,
        "model_not_found",
        "no-such-model",
    )
    assert line["deployment"] == "" and line["attempts"] == 0


# --- requests that made no call -----------------------------------------------------------------


async def test_a_bad_key_gets_a_request_line_without_the_key(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    presented = "tg-" + "x" * 43
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "gpt-test", "messages": [{"role": "user", "content": PROMPT}]},
                headers={"Authorization": f"Bearer {presented}"},
            )
            listed = await client.get("/v1/models", headers=tenants["alice"].headers)
    assert response.status_code == 401 and listed.status_code == 200
    refused, models = request_lines(caplog)
    assert refused["request_id"] == response.headers["x-request-id"]
    assert (refused["method"], refused["path"]) == ("POST", "/v1/chat/completions")
    assert (refused["status"], refused["error_type"]) == (401, "invalid_api_key")
    assert "tenant" not in refused and refused["latency_ms"] >= 0
    assert presented[:12] not in json.dumps(refused) and PROMPT not in json.dumps(refused)
    assert (models["path"], models["status"], models["tenant"]) == ("/v1/models", 200, "alice")


async def test_a_bad_key_on_anthropics_api_has_the_same_error_type(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            response = await client.post(
                "/v1/messages", json={}, headers={"x-api-key": "tg-" + "y" * 43}
            )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"  # Anthropic's shape
    (line,) = request_lines(caplog)
    assert (line["path"], line["error_type"]) == ("/v1/messages", "invalid_api_key")


async def test_headers_refused_before_django_get_a_request_line(
    tenants: dict[str, TenantKey], gateway_runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            response = await client.post(
                "/v1/chat/completions",
                headers={"x-padding": "p" * 70_000, **tenants["bob"].headers},
            )
    assert response.status_code == 431
    (line,) = request_lines(caplog)
    assert (line["status"], line["path"], line["request_id"]) == (
        431,
        "/v1/chat/completions",
        response.headers["x-request-id"],
    )
    assert tenants["bob"].raw not in json.dumps(line)


async def test_the_request_log_switched_off_writes_no_line(
    tenants: dict[str, TenantKey],
    gateway_runtime: Any,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.REDIS_URL = ""  # a runtime built and never started: no Redis client to close
    settings.TOLLGATE_REQUEST_LOG = False
    assert not any(isinstance(o, RequestLog) for o in runtime.build_runtime().observers)
    gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    with caplog.at_level(logging.INFO, logger="tollgate.requests"):
        async with api_client() as client:
            response = await client.get("/v1/models")
    assert response.status_code == 401
    assert request_lines(caplog) == []
    settings.TOLLGATE_REQUEST_LOG = True
    assert any(isinstance(o, RequestLog) for o in runtime.build_runtime().observers)
