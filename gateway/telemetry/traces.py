"""Traces: a span per call and a child span per upstream attempt, sent over OTLP/HTTP.

Imported only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set
(``gateway.telemetry.call_tracer``): without it, nothing of OpenTelemetry is imported or run.
The exporter reads OpenTelemetry's standard variables itself (endpoint, headers, timeout,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``...).

The spans are made once the call is recorded and answered (``CallTracer.call_finished``), with the
times the call kept (``time.perf_counter`` readings placed on the wall clock by
``call.started_at``): nothing runs during the call, and a span costs the request path only its
building; a ``BatchSpanProcessor`` thread sends them.

- **The call's span**, kind SERVER: it is the gateway's side of the caller's request, and
  continues the caller's trace when the request carries a W3C ``traceparent``. Named after the
  GenAI conventions, ``{gen_ai.operation.name} {gen_ai.request.model}`` ("chat gpt-4o"), it
  carries what the caller asked for and got: the requested model, the model and provider that
  answered, the usage, ``error.type``, and ``tollgate.*`` (request id, tenant, deployment,
  attempts, cost). Its status is an error for a 5xx only: a 4xx is the caller's (as for HTTP
  server spans).
- **A child per upstream attempt**, kind CLIENT (the gateway is the model's client, as the
  GenAI conventions have it), named ``{operation} {upstream model}``, from the attempt's start to
  the answer's (for a stream that went on, to its end); a failed one has ``error.type`` and an
  error status. The usage is on the call's span only, so that a backend summing tokens over
  spans counts them once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.telemetry import endpoint_name

if TYPE_CHECKING:
    from gateway.calls.pipeline import Call
    from gateway.telemetry import Attempt

OPERATIONS = {
    "chat.completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "images.generations": "generate_content",
    "audio.speech": "generate_content",
    "audio.transcriptions": "generate_content",
    "messages.count_tokens": "count_tokens",
}
"""``gen_ai.operation.name`` of each endpoint: the conventions' own values (images and audio are
``generate_content``, multimodal generation), and a name of ours for a token count."""

USAGE_ATTRIBUTES = (
    ("gen_ai.usage.input_tokens", "prompt_tokens"),
    ("gen_ai.usage.output_tokens", "completion_tokens"),
    ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
    ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
    ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
)
"""The GenAI usage attributes, and the ledger columns they are read from."""

_propagator = TraceContextTextMapPropagator()


def tracer_provider(processor: SpanProcessor | None = None) -> TracerProvider:
    """A provider whose spans go to ``processor``; by default, batched to the OTLP/HTTP
    exporter configured by the environment. The service is "tollgate" unless
    ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``) names it."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "tollgate"}))
    provider = TracerProvider(resource=resource)
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    return provider


class CallTracer:
    """The traces' observer of calls (``Runtime.observers``)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("tollgate")

    def call_finished(self, call: Call, row: dict[str, Any]) -> None:
        def wall_ns(reading: float) -> int:  # a perf_counter reading, on the wall clock
            return int((call.started_at + reading - call.started) * 1e9)

        endpoint = endpoint_name(call)
        operation = OPERATIONS.get(endpoint, endpoint)
        route = call.route
        status = row["status_code"]
        ended = call.ended if call.ended is not None else call.started
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": call.requested_model,
            "gen_ai.request.stream": call.stream,
            "http.response.status_code": status,
            "tollgate.request_id": call.request_id,
            "tollgate.endpoint": endpoint,
            "tollgate.tenant.id": call.caller.tenant_id,
            "tollgate.tenant.name": call.caller.tenant_name,
            "tollgate.api_key.id": call.caller.key_id,
            "tollgate.attempts": call.attempts,
            "tollgate.fallback": call.fallback_used,
            "tollgate.cost_usd": float(row["cost_usd"]),
            "tollgate.usage_estimated": row["usage_estimated"],
        }
        if route is not None and call.attempts:
            attributes["gen_ai.provider.name"] = route.provider_name
            attributes["gen_ai.system"] = route.provider_name  # its name before semconv 1.37
            attributes["tollgate.deployment"] = route.deployment
        if call.answer_started is not None and route is not None:
            attributes["gen_ai.response.model"] = route.upstream_model
            if call.stream:
                seconds = call.answer_started - call.started
                attributes["gen_ai.response.time_to_first_chunk"] = seconds
        for name, column in USAGE_ATTRIBUTES:
            if (value := row[column]) is not None:
                attributes[name] = value
        if row["error_type"]:
            attributes["error.type"] = row["error_type"]
        parent = (
            _propagator.extract({"traceparent": call.traceparent}) if call.traceparent else None
        )
        span = self.tracer.start_span(
            f"{operation} {call.requested_model}".rstrip(),
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=wall_ns(call.started),
        )
        if not span.is_recording():  # sampled out (OTEL_TRACES_SAMPLER): its attempts too
            return
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, row["error_type"] or None))
        inside = trace.set_span_in_context(span)
        for attempt in call.attempt_log:
            self._attempt_span(call, attempt, operation, inside, wall_ns)
        span.end(end_time=wall_ns(ended))

    def _attempt_span(
        self,
        call: Call,
        attempt: Attempt,
        operation: str,
        parent: context.Context,
        wall_ns: Callable[[float], int],
    ) -> None:
        route = attempt.route
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": route.provider_name,
            "gen_ai.request.model": route.upstream_model,
            "tollgate.deployment": route.deployment,
        }
        ended = attempt.ended
        if attempt.error is not None:
            attributes["error.type"] = attempt.error.code or attempt.error.type
            attributes["http.response.status_code"] = attempt.error.status
        else:
            attributes["gen_ai.response.model"] = route.upstream_model
            if call.stream and call.ended is not None:
                ended = call.ended  # the upstream streamed until the call's end
        child = self.tracer.start_span(
            f"{operation} {route.upstream_model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=wall_ns(attempt.started),
        )
        if attempt.error is not None:
            child.set_status(Status(StatusCode.ERROR, attributes["error.type"]))
        child.end(end_time=wall_ns(ended))

    def shutdown(self) -> None:
        """Send the spans still batched (at shutdown; blocks up to the exporter's timeout)."""
        self.provider.shutdown()
