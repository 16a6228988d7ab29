"""What the gateway tells its operators: metrics (``metrics``), a log line per request
(``logs``) and traces (``traces``).

They all learn of a call the same way: once its ledger row is built and its answer sent,
``Call.tell_observers`` hands the call and its row to every ``CallObserver`` of the runtime
(``Runtime.observers``; ``ApiHandler`` calls it after the answer, ninja's view at once). The call
carries what a row does not: each upstream attempt with its timing (``Attempt``), when the answer
started, how long the upstream took, and the error that ended it (``call.error``: a refusal
is told apart from an upstream's 429 there). Observers run on the event loop, once per call:
they must be cheap, and must not raise (one that does is logged and the call goes on).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gateway.calls.pipeline import Call
    from providers.errors import GatewayError
    from providers.factory import Route

log = logging.getLogger("tollgate.telemetry")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream attempt of a call: where it went, when (``time.perf_counter``), and the
    error that ended it (None: the answer started)."""

    route: Route
    started: float
    ended: float
    error: GatewayError | None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


class CallObserver(Protocol):
    def call_finished(self, call: Call, row: dict[str, Any]) -> None:
        """``row`` is the call's ledger row (also built for a call that keeps none, such as a
        token count: ``call.keeps_row`` says which)."""


def endpoint_name(call: Call) -> str:
    """The call's endpoint as telemetry names it: the ledger's name, but for a token count
    (``POST /v1/messages/count_tokens``, which keeps no row): ``messages.count_tokens``."""
    return call.endpoint.value if call.keeps_row else f"{call.endpoint.value}.count_tokens"


@runtime_checkable
class FlushingObserver(CallObserver, Protocol):
    def shutdown(self) -> None:
        """Send what is buffered; called once, when the runtime closes (it may block)."""


def call_tracer() -> CallObserver | None:
    """The traces' observer (``gateway.telemetry.traces``), for a runtime whose settings ask
    for traces: OpenTelemetry is imported here, and only here. Without its packages, one error
    says how to install them, and the gateway serves without traces."""
    try:
        from gateway.telemetry.traces import CallTracer, tracer_provider
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        log.error(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed (no module "
            "%r): pip install 'tollgate[otel]'. Serving without traces.",
            exc.name,
        )
        return None
    log.info("traces: a span per call, sent over OTLP/HTTP (OTEL_EXPORTER_OTLP_* variables)")
    return CallTracer(tracer_provider())
