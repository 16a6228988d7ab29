"""What the Prometheus metrics cost a call, measured in process: ``Metrics.call_finished`` on real
``Call`` objects of config.toml's first model (a JSON call and a stream, each with one upstream
attempt and a priced usage), and what a worker's once-a-second flush of them costs. Prints one
JSON line; ``bench/run.py`` runs it and reports it against the cost of a whole call at c50.

    .venv/bin/python bench/metrics_cost.py [--calls 50000]

wrk cannot see a cost of a few microseconds in a call of ~800: the machine's round-to-round spread
is +-7%. This is the direct measure, as ``record()`` is for the ledger's journal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
OWN_DIRECTORY = "TOLLGATE_METRICS_DIR" not in os.environ
if OWN_DIRECTORY:
    os.environ["TOLLGATE_METRICS_DIR"] = tempfile.mkdtemp(prefix="tollgate-metrics-cost-")

import django  # noqa: E402

django.setup()

from gateway.api.errors import error_response  # noqa: E402
from gateway.calls.pipeline import Call  # noqa: E402
from gateway.runtime import Runtime, build_runtime  # noqa: E402
from gateway.telemetry.metrics import Metrics  # noqa: E402
from gateway.tenants.auth import Caller  # noqa: E402
from gateway.usage.endpoints import Endpoint  # noqa: E402


def recorded_call(runtime: Runtime, stream: bool) -> tuple[Call, dict[str, Any]]:
    """A call as ``Call.record`` hands it to observers: routed, one attempt, answered."""
    call = Call(
        runtime, Caller(1, "bench", 1, "tg_bench"), Endpoint.CHAT_COMPLETIONS, error_response
    )
    alias = next(iter(runtime.config.models))
    call.resolve(alias)
    call.stream = stream
    assert call.route is not None
    call.attempted(call.route, time.perf_counter(), None)
    call.ended = time.perf_counter() + 0.001
    row = {
        "status_code": 200,
        "prompt_tokens": 11,
        "completion_tokens": 20,
        "cache_read_tokens": 3,
        "cache_write_tokens": None,
        "reasoning_tokens": 2,
        "cost_usd": Decimal("0.0000195"),
    }
    return call, row


def per_call_us(metrics: Metrics, call: Call, row: dict[str, Any], calls: int) -> float:
    metrics.call_finished(call, row)  # its series exist from now on
    started = time.perf_counter()
    for _ in range(calls):
        metrics.call_finished(call, row)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=50_000)
    calls = parser.parse_args().calls
    runtime = build_runtime()
    metrics = runtime.metrics
    assert metrics is not None, "TOLLGATE_METRICS is off"
    result: dict[str, float] = {}
    for name, stream in (("json_us", False), ("stream_us", True)):
        call, row = recorded_call(runtime, stream)
        result[name] = min(per_call_us(metrics, call, row, calls) for _ in range(3))
    metrics.flush()  # the first writes every series' keys in the files
    for stream in (False, True):
        metrics.call_finished(*recorded_call(runtime, stream))
    started = time.perf_counter()
    metrics.flush()
    result["flush_us"] = (time.perf_counter() - started) * 1e6
    print(json.dumps({key: round(value, 2) for key, value in result.items()}))
    if OWN_DIRECTORY:
        shutil.rmtree(os.environ["TOLLGATE_METRICS_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
