"""Traces (issue #15): with an OTLP endpoint set, a span per call with the GenAI attributes and a
child per upstream attempt; without one, nothing of OpenTelemetry is imported. In process with an
in-memory exporter, and end to end with the real OTLP/HTTP exporter sending to a collector that
this test runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support.e2e import HELLO
from support.inprocess import api_client

from conftest import ROOT, TenantKey, start_gateway
from gateway import runtime
from gateway.telemetry import call_tracer
from gateway.telemetry.traces import OPERATIONS, CallTracer, tracer_provider
from gateway.usage.endpoints import Endpoint

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "fake-gpt",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 3},
    },
}
STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\n'
    b"data: [DONE]\n\n"
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans(gateway_runtime: Any) -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """``install(handler)``: a runtime whose only observer traces into the exporter."""
    exporter = InMemorySpanExporter()
    tracer = CallTracer(tracer_provider(SimpleSpanProcessor(exporter)))

    def install(handler: Any) -> runtime.Runtime:
        current: runtime.Runtime = gateway_runtime(handler)
        current.observers = (tracer,)
        return current

    yield install, exporter
    tracer.shutdown()


def busy_then(answer: httpx.Response) -> Any:
    """An upstream that answers 503 once, then ``answer``: the router retries."""
    answers = [answer, httpx.Response(503, json={"error": {"message": "busy"}})]
    return lambda request: answers.pop() if len(answers) > 1 else answers[0]


def post(who: TenantKey, **body: Any) -> dict[str, Any]:
    return {
        "json": {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], **body},
        "headers": who.headers,
    }


def by_kind(finished: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (call,) = [s for s in finished if s.kind is SpanKind.SERVER]
    attempts = sorted(
        (s for s in finished if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    return call, attempts


async def test_a_retried_call_is_one_span_with_a_child_per_attempt(
    tenants: dict[str, TenantKey], spans: Any
) -> None:
    install, exporter = spans
    install(busy_then(httpx.Response(200, json=COMPLETION)))
    alice = tenants["alice"]
    async with api_client() as client:
        response = await client.post("/v1/chat/completions", **post(alice))
    assert response.status_code == 200
    call, (failed, served) = by_kind(exporter.get_finished_spans())
    assert call.name == "chat gpt-test"
    assert call.status.status_code is StatusCode.UNSET
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-test",
        "gen_ai.response.model": "fake-gpt",
        "gen_ai.provider.name": "fake",
        "gen_ai.system": "fake",
        "gen_ai.request.stream": False,
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 3,
        "http.response.status_code": 200,
        "tollgate.request_id": response.headers["x-request-id"],
        "tollgate.endpoint": "chat.completions",
        "tollgate.tenant.id": alice.tenant.pk,
        "tollgate.tenant.name": "alice",
        "tollgate.api_key.id": alice.key.pk,
        "tollgate.deployment": "fake/fake-gpt",
        "tollgate.attempts": 2,
        "tollgate.fallback": False,
    }
    attributes = dict(call.attributes or {})
    assert {key: attributes.get(key) for key in expected} == expected
    assert attributes["tollgate.cost_usd"] == pytest.approx((8 + 3 * 0.5 + 5 * 2) / 1e6)
    assert "error.type" not in attributes
    for attempt in (failed, served):
        assert attempt.name == "chat fake-gpt"
        assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
        assert attempt.context.trace_id == call.context.trace_id
        assert call.start_time <= attempt.start_time <= attempt.end_time <= call.end_time  # type: ignore[operator]
        assert "gen_ai.usage.input_tokens" not in (attempt.attributes or {})
    assert failed.end_time <= served.start_time  # type: ignore[operator]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "upstream_overloaded"  # type: ignore[index]
    assert failed.attributes["http.response.status_code"] == 503  # type: ignore[index]
    assert served.status.status_code is StatusCode.UNSET
    assert served.attributes["gen_ai.response.model"] == "fake-gpt"  # type: ignore[index]


async def test_a_stream_has_its_first_chunk_and_its_attempt_lasts_to_the_end(
    tenants: dict[str, TenantKey], spans: Any
) -> None:
    install, exporter = spans
    install(
        lambda request: httpx.Response(
            200, content=STREAM, headers={"content-type": "text/event-stream"}
        )
    )
    async with api_client() as client:
        response = await client.post("/v1/chat/completions", **post(tenants["bob"], stream=True))
    assert response.status_code == 200
    call, (served,) = by_kind(exporter.get_finished_spans())
    attributes = call.attributes or {}
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.usage.input_tokens"] == 7
    first_chunk = attributes["gen_ai.response.time_to_first_chunk"]
    assert isinstance(first_chunk, float)
    assert 0 < first_chunk * 1e9 <= call.end_time - call.start_time  # type: ignore[operator]
    assert served.end_time == call.end_time  # the upstream streamed until the call ended


async def test_the_callers_traceparent_is_continued(
    tenants: dict[str, TenantKey], spans: Any
) -> None:
    install, exporter = spans
    install(lambda request: httpx.Response(200, json=COMPLETION))
    request = post(tenants["alice"])
    request["headers"] = {**request["headers"], "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    async with api_client() as client:
        await client.post("/v1/chat/completions", **request)
        await client.post("/v1/chat/completions", **post(tenants["alice"]))  # a trace of its own
    continued, fresh = sorted(
        (s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER),
        key=lambda s: s.start_time or 0,
    )
    assert continued.context.trace_id == int(TRACE_ID, 16)
    assert continued.parent is not None and continued.parent.span_id == int(PARENT_ID, 16)
    assert continued.parent.is_remote
    assert fresh.context.trace_id != int(TRACE_ID, 16) and fresh.parent is None


async def test_a_failure_is_an_error_when_it_is_the_gateways_not_the_callers(
    tenants: dict[str, TenantKey], spans: Any
) -> None:
    install, exporter = spans
    install(lambda request: httpx.Response(500, json={"error": {"message": "down"}}))
    async with api_client() as client:
        upstream_failed = await client.post("/v1/chat/completions", **post(tenants["alice"]))
        unknown = await client.post(
            "/v1/chat/completions", **post(tenants["alice"], model="no-such-model")
        )
    assert (upstream_failed.status_code, unknown.status_code) == (502, 404)
    finished = exporter.get_finished_spans()
    failed, refused = sorted(
        (s for s in finished if s.kind is SpanKind.SERVER), key=lambda s: s.start_time or 0
    )
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "upstream_unavailable"
    assert failed.attributes["tollgate.attempts"] == 3
    assert len([s for s in finished if s.kind is SpanKind.CLIENT]) == 3
    assert refused.name == "chat no-such-model"
    assert refused.status.status_code is StatusCode.UNSET  # the caller's mistake, not ours
    assert refused.attributes["error.type"] == "model_not_found"
    assert "gen_ai.response.model" not in (refused.attributes or {})


def test_every_endpoint_has_an_operation_name() -> None:
    assert {endpoint.value for endpoint in Endpoint} <= set(OPERATIONS)
    assert OPERATIONS["embeddings"] == "embeddings" and OPERATIONS["messages"] == "chat"


def test_the_service_is_tollgate_unless_the_environment_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    processor = SimpleSpanProcessor(InMemorySpanExporter())
    assert tracer_provider(processor).resource.attributes["service.name"] == "tollgate"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    assert tracer_provider(processor).resource.attributes["service.name"] == "gateway-eu"


async def test_closing_the_runtime_sends_the_spans_still_batched(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    exporter = InMemorySpanExporter()
    batched = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    current: runtime.Runtime = gateway_runtime(lambda request: httpx.Response(200, json=COMPLETION))
    current.observers = (CallTracer(tracer_provider(batched)),)
    async with api_client() as client:
        await client.post("/v1/chat/completions", **post(tenants["alice"]))
    assert exporter.get_finished_spans() == ()
    await current.aclose()
    assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.CLIENT, SpanKind.SERVER]


# --- when it is on, and when it is not --------------------------------------------------------

PROBE = """
import json, sys
from tollgate.asgi import application
from gateway.runtime import get_runtime
observers = [type(o).__name__ for o in get_runtime().observers]
loaded = sorted({m.split(".")[0] + "." + m.split(".")[1] for m in sys.modules
                 if m.startswith("opentelemetry.")})
print(json.dumps({"observers": observers, "opentelemetry": loaded}))
"""


def probe(tmp_path: Path, **env: str) -> dict[str, Any]:
    """Import the app and build its runtime in a fresh process; what it loaded."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, "TOLLGATE_VAR_DIR": str(tmp_path), "REDIS_URL": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    off = probe(tmp_path)
    assert off == {"observers": ["Metrics", "RequestLog"], "opentelemetry": []}
    on = probe(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert on["observers"] == ["Metrics", "RequestLog", "CallTracer"]
    assert "opentelemetry.sdk" in on["opentelemetry"]
    disabled = probe(
        tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_SDK_DISABLED="true"
    )
    assert disabled == off


def test_without_the_packages_one_error_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "gateway.telemetry.traces")
    assert call_tracer() is None
    (error,) = [r for r in caplog.records if r.name == "tollgate.telemetry"]
    assert "pip install 'tollgate[otel]'" in error.getMessage()
    assert "Serving without traces" in error.getMessage()


# --- end to end: the OTLP/HTTP exporter, to a collector of our own ------------------------------


class Collector(BaseHTTPRequestHandler):
    """Keeps the bodies POSTed to /v1/traces (OTLP/HTTP protobuf)."""

    received: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            self.received.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.e2e
def test_a_gateway_with_an_endpoint_sends_its_spans_over_otlp_http(
    tenants: dict[str, TenantKey], fake_upstream: str, tmp_path: Path
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    Collector.received = []
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    server = start_gateway(
        tmp_path,
        fake_upstream,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "tollgate-e2e"},
    )
    try:
        headers = {**tenants["alice"].headers, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        answered = httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "gpt-test", "messages": HELLO},
            headers=headers,
            timeout=10,
        )
        failed = httpx.post(
            server.base_url + "/v1/chat/completions",
            json={"model": "fail-500", "messages": HELLO},
            headers=tenants["alice"].headers,
            timeout=10,
        )
    finally:
        # SIGTERM: the spans still batched are sent on the way out
        assert server.stop() in (0, -signal.SIGTERM)
        collector.shutdown()
    assert (answered.status_code, failed.status_code) == (200, 502)
    spans = []
    for body in Collector.received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert service["service.name"] == "tollgate-e2e"
            for scope_spans in resource_spans.scope_spans:
                spans += list(scope_spans.spans)
    calls = {
        next(a.value.string_value for a in s.attributes if a.key == "gen_ai.request.model"): s
        for s in spans
        if s.kind == s.SPAN_KIND_SERVER
    }
    assert set(calls) == {"gpt-test", "fail-500"}
    served = calls["gpt-test"]
    assert served.name == "chat gpt-test" and served.trace_id.hex() == TRACE_ID
    assert served.parent_span_id.hex() == PARENT_ID
    attributes = {a.key: a.value for a in served.attributes}
    assert attributes["gen_ai.usage.input_tokens"].int_value == 11
    assert attributes["tollgate.request_id"].string_value == answered.headers["x-request-id"]
    children = [s for s in spans if s.parent_span_id == calls["fail-500"].span_id]
    assert len(children) == 3 and all(s.kind == s.SPAN_KIND_CLIENT for s in children)
    assert calls["fail-500"].status.code == calls["fail-500"].status.STATUS_CODE_ERROR
