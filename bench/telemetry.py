"""What the request log and the traces cost a call, in process: ``.venv/bin/python
bench/telemetry.py``. wrk cannot see a cost of a few percent on a shared machine
(bench/README.md); this times the observers themselves on one call's row, as ``Call.record``
hands it to them: the request line written to a file by the root's handler of
``settings.LOGGING`` (``ConsoleHandler``) on an event loop, as in a worker (text, JSON; held and
written a few at a time), off an event loop (a write per line), through a ``LogRecord`` (when a
filter or a second handler is on its way), the logger off; and the spans of a call with one and
two attempts, batched to an exporter that drops them (sampled in, and sampled out). Best of 5
runs of N calls each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
os.environ.setdefault("TOLLGATE_VAR_DIR", tempfile.mkdtemp(prefix="tollgate-telemetry-"))
os.environ["REDIS_URL"] = ""

import django

django.setup()

from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF  # noqa: E402

from gateway.api.errors import error_response  # noqa: E402
from gateway.calls.pipeline import Call  # noqa: E402
from gateway.runtime import build_runtime  # noqa: E402
from gateway.telemetry import Attempt  # noqa: E402
from gateway.telemetry.logs import (  # noqa: E402
    ConsoleHandler,
    JsonFormatter,
    RequestLog,
    TextFormatter,
)
from gateway.telemetry.traces import CallTracer, tracer_provider  # noqa: E402
from gateway.tenants.auth import Caller  # noqa: E402
from gateway.usage.endpoints import Endpoint  # noqa: E402


class Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def microseconds_per_call(observe: Callable[[], None], calls: int) -> float:
    for _ in range(calls // 10):
        observe()
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            observe()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return min(runs)


def finished_call(attempts: int) -> tuple[Call, dict[str, Any]]:
    """A chat call answered after ``attempts`` attempts, and its ledger row."""
    runtime = build_runtime()
    runtime.observers = ()
    call = Call(
        runtime, Caller(1, "alice", 1, "tg-abcdefghi"), Endpoint.CHAT_COMPLETIONS, error_response
    )
    route = call.resolve(next(iter(runtime.config.models)))
    now = time.perf_counter()
    call.attempt_log = [Attempt(route, now, now, None) for _ in range(attempts)]
    call.attempts, call.answer_started, call.ended = attempts, now, now
    row = {
        "created_at": datetime.now(UTC),
        "requested_model": route.requested_model,
        "served_model": route.requested_model,
        "provider": route.provider_name,
        "attempts": attempts,
        "fallback": False,
        "stream": False,
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "cache_read_tokens": 3,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
        "usage_estimated": False,
        "cost_usd": Decimal("0.0000195"),
        "status_code": 200,
        "error_type": "",
        "latency_ms": 3,
    }
    return call, row


def main() -> None:
    call, row = finished_call(1)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    with tempfile.NamedTemporaryFile("w", prefix="request-log-") as file:
        handler = ConsoleHandler(file)
        root.addHandler(handler)
        request_log = RequestLog()

        def line_cost() -> float:
            return microseconds_per_call(lambda: request_log.call_finished(call, row), 20_000)

        async def on_the_loop() -> float:
            return line_cost()

        for name, formatter in (("text", TextFormatter()), ("JSON", JsonFormatter())):
            handler.setFormatter(formatter)
            cost = asyncio.run(on_the_loop())
            print(f"request line, {name}, on the loop:    {cost:6.1f} us a call")
        print(f"request line, JSON, off the loop:   {line_cost():6.1f} us a call")
        root.addHandler(logging.NullHandler())
        print(f"request line, JSON, via a LogRecord:{asyncio.run(on_the_loop()):6.1f} us a call")
        logging.getLogger("tollgate.requests").setLevel(logging.WARNING)
        print(f"request log, logger off:            {line_cost():6.2f} us a call")
    for sampled in (True, False):
        processor = BatchSpanProcessor(Drop(), max_queue_size=100_000)
        provider = tracer_provider(processor)
        if not sampled:
            provider.sampler = ALWAYS_OFF
        tracer = CallTracer(provider)
        for attempts in (1, 2):
            call, row = finished_call(attempts)
            cost = microseconds_per_call(lambda: tracer.call_finished(call, row), 5_000)  # noqa: B023
            label = f"{attempts} attempt(s), {'sampled' if sampled else 'sampled out'}"
            print(f"traces, {label + ':':<27} {cost:6.1f} us a call")
        tracer.shutdown()


if __name__ == "__main__":
    main()
