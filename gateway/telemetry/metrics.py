"""Prometheus metrics: what every call did, what the ledger writer and the router are doing, and
whether the database and Redis answer, for operators to graph and alert on.

Names follow OpenTelemetry's GenAI semantic conventions where one exists
(``gen_ai_client_token_usage_total``, ``gen_ai_server_request_duration_seconds``,
``gen_ai_server_time_to_first_token_seconds``, ``gen_ai_server_time_per_output_token_seconds``);
the rest are ``tollgate_``. The deploy guide's alert rules are written against these names: they
are a contract.

Labels stay bounded whatever clients send: ``model`` is an alias of config.toml (a passthrough
name, ``provider/anything``, counts as ``provider/*``), ``""`` for a call refused before its model
was known (a bad key, an unknown model or URL); ``endpoint`` is the ledger's name of the endpoint
(``chat.completions``, ``messages``...; ``messages.count_tokens`` for a token count, ``models``,
``usage`` or ``other`` for requests that are not calls). With TOLLGATE_METRICS_TENANT_LABEL the
requests, tokens and cost also carry ``tenant``, the tenant's name (unique, and what the admin
shows; renaming a tenant starts new series): one series per tenant, model and endpoint, which is
why it is off by default.

**Several workers, one set** (prometheus_client's multi-process mode). Each worker keeps its
values in files of TOLLGATE_METRICS_DIR (the settings point PROMETHEUS_MULTIPROC_DIR at it before
prometheus_client is imported), and a scrape, whichever worker answers it, adds up every
worker's files. What an operator does: nothing, but give each gateway a directory of its own on
local disk, shared by all of its workers (the default, ``var/metrics``, is). The first process of
a run (the one that finds no live process holding the directory, ``multiprocess.claim``) empties
it, so counters start from zero when the gateway starts, and a worker that uvicorn restarts
keeps its siblings' counts and its predecessor's. Gauges of a worker that stops count no more
(``mark_process_dead`` on shutdown; a killed worker's are dropped at the next scrape).

Per call, ``call_finished`` costs one dict lookup for the call's series (label children are
cached by their label values, never looked up through ``.labels()`` on the hot path) and a few
additions in process memory (``gateway.telemetry.pending``), which each worker writes to its
files every ``REFRESH_SECONDS`` and before it answers a scrape: a scrape may miss the last second
of the other workers' calls. ``make bench`` measures the cost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.limits.policy import BudgetExceeded, ModelNotAllowed, RateLimited
from gateway.outage import Outage
from gateway.telemetry import multiprocess
from gateway.telemetry.pending import PendingCount, PendingHistogram
from gateway.telemetry.scrape import Listener
from gateway.usage.endpoints import Endpoint

if TYPE_CHECKING:
    from gateway.calls.pipeline import Call
    from gateway.runtime import Runtime
    from providers.factory import Route

REFRESH_SECONDS = 1.0
"""How often each worker writes what it counted, and its gauges (ledger queue, spool, services),
to its files for the others."""

DURATION_BUCKETS = tuple(round(0.01 * 2**n, 2) for n in range(14))  # 0.01 s to 81.92 s
"""OpenTelemetry's advice for ``gen_ai.server.request.duration`` (seconds)."""
# fmt: off
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                       5.0, 7.5, 10.0)
"""OpenTelemetry's advice for ``gen_ai.server.time_to_first_token``."""
# fmt: on
PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
"""OpenTelemetry's advice for ``gen_ai.server.time_per_output_token``."""
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""The gateway's own time: a millisecond or so, unless something waits (a retry's backoff)."""
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
ROW_TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
"""The ledger row's count of each of ``TOKEN_TYPES``."""

REFUSAL_REASONS: dict[type[Exception], str] = {
    BudgetExceeded: "budget",
    RateLimited: "rate_limit",
    ModelNotAllowed: "model_not_allowed",
}
"""The policy's refusals (``gateway.limits.policy``), by the error that ended the call."""

ENDPOINT_OF_PATH = {
    **{"/v1/" + endpoint.value.replace(".", "/"): endpoint.value for endpoint in Endpoint},
    "/v1/messages/count_tokens": "messages.count_tokens",
    "/v1/models": "models",
    "/v1/usage": "usage",
}
"""Each endpoint's path is its name with slashes (``audio.speech``: ``/v1/audio/speech``)."""


def endpoint_of_path(path: str) -> str:
    """The endpoint label of a request that is not a call (a refusal before one, a model list)."""
    if (endpoint := ENDPOINT_OF_PATH.get(path)) is not None:
        return endpoint
    if path.startswith("/v1/models/"):
        return "models"
    if path.startswith("/v1/responses/"):
        return "responses"  # a stored response
    return "other"


@dataclass(slots=True)
class CallSeries:
    """What one kind of call updates (same endpoint, model, provider, status class, stream or
    not, tenant)."""

    requests: PendingCount
    duration: PendingHistogram
    overhead: PendingHistogram
    upstream: PendingHistogram
    stream_times: tuple[PendingHistogram, PendingHistogram] | None
    """Streams only: time to first token, time per output token."""
    tokens: tuple[PendingCount, ...]
    """One counter per ``TOKEN_TYPES``."""
    cost: PendingCount


class Metrics:
    """The gateway's metrics: a ``CallObserver`` of every call, a ``LedgerObserver`` of the
    ledger writer, and the reader of what the runtime knows (``refresh``, ``scrape``)."""

    def __init__(
        self,
        directory: Path,
        aliases: Collection[str],
        tenant_label: bool = False,
        address: tuple[str, int] | None = None,
    ) -> None:
        if values.ValueClass is values.MutexValue:
            raise ImproperlyConfigured(
                "prometheus_client was imported before tollgate.settings set "
                "PROMETHEUS_MULTIPROC_DIR: each worker would report only its own metrics"
            )
        self.directory = directory
        self._directory_lock = multiprocess.claim(directory)  # before any value is created
        self.aliases = frozenset(aliases)
        self.tenant_label = tenant_label
        self.address = address
        self.listener: Listener | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._disk = Outage(f"metrics directory {directory}")
        tenant = ("tenant",) if tenant_label else ()
        model = ("model", "provider")

        self.requests = Counter(
            "tollgate_requests",
            "API requests, by endpoint, model, provider and status class (2xx, 4xx, 5xx)",
            ("endpoint", *model, "status_class", *tenant),
            registry=None,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from a call's start to the end of its answer",
            ("endpoint", *model),
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.overhead = Histogram(
            "tollgate_gateway_overhead_seconds",
            "A call's time outside its upstream: the gateway's own, and backoff between retries",
            ("endpoint",),
            buckets=OVERHEAD_BUCKETS,
            registry=None,
        )
        self.upstream = Histogram(
            "tollgate_upstream_duration_seconds",
            "A call's time waiting on upstreams: its attempts, then a stream's relay",
            model,
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.first_token = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streams: time from the call's start to the upstream's first chunk",
            model,
            buckets=FIRST_TOKEN_BUCKETS,
            registry=None,
        )
        self.per_output_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streams: time per output token after the first",
            model,
            buckets=PER_TOKEN_BUCKETS,
            registry=None,
        )
        self.tokens = Counter(
            "gen_ai_client_token_usage",
            "Tokens, by type: input (all of the prompt, cached included), output, cache_read, "
            "cache_write, reasoning (part of output)",
            (*model, "token_type", *tenant),
            registry=None,
        )
        self.cost = Counter(
            "tollgate_cost_usd",
            "What the calls cost, in USD, at config.toml's prices",
            (*model, *tenant),
            registry=None,
        )
        self.refusals = Counter(
            "tollgate_refusals",
            "Calls refused by a tenant's or key's limits: budget, rate_limit, model_not_allowed",
            ("reason",),
            registry=None,
        )
        self.attempts = Counter(
            "tollgate_upstream_attempts",
            "Upstream attempts, by deployment and outcome (ok, or the error's code)",
            ("provider", "deployment", "outcome"),
            registry=None,
        )
        self.retries = Counter(
            "tollgate_retries",
            "Attempts after a call's first (on its model or a fallback), by the model asked for",
            ("model",),
            registry=None,
        )
        self.fallbacks = Counter(
            "tollgate_fallbacks",
            "Calls that moved to a fallback model, by the model asked for",
            ("model",),
            registry=None,
        )
        self.ledger_queue = Gauge(
            "tollgate_ledger_queue_rows",
            "Ledger rows queued in memory, not yet written",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.ledger_spooled = Gauge(
            "tollgate_ledger_spooled_rows",
            "Ledger rows spooled to disk since the database went away (0 once it answers)",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.ledger_batch = Histogram(
            "tollgate_ledger_batch_write_seconds",
            "Time to write one batch of ledger rows (retries included)",
            buckets=BATCH_BUCKETS,
            registry=None,
        )
        self.ledger_dead_letters = Counter(
            "tollgate_ledger_dead_letter_rows",
            "Ledger rows the database refused, now in the dead letter",
            registry=None,
        )
        self.service_up = Gauge(
            "tollgate_service_up",
            "1 while every worker finds the service up (database: its ledger writer, which "
            "probes it while it is down; redis, when configured: the routers' health sync, "
            "every 0.5 s), else 0",
            ("service",),
            registry=None,
            multiprocess_mode="livemin",
        )
        self._calls: dict[tuple[object, ...], CallSeries] = {}
        self._counts: dict[tuple[object, ...], PendingCount] = {}
        self._histograms: dict[tuple[object, ...], PendingHistogram] = {}
        self._pending: list[PendingCount | PendingHistogram] = []
        """Everything ``flush`` writes."""

    # --- per call (the request path) ------------------------------------------------------------

    def call_finished(self, call: Call, row: dict[str, Any]) -> None:
        route = call.route
        model = self._model_label(route)
        provider = route.provider_name if route is not None else ""
        endpoint = call.endpoint.value if call.keeps_row else call.endpoint.value + ".count_tokens"
        status = row["status_code"]
        tenant = call.caller.tenant_name if self.tenant_label else ""
        key = (endpoint, model, provider, status // 100, call.stream, tenant)
        series = self._calls.get(key)
        if series is None:
            series = self._calls[key] = self._call_series(key)
        ended = call.ended
        assert ended is not None, "observers are told of recorded calls"
        seconds = ended - call.started
        upstream = call.upstream_seconds
        series.requests.inc()
        series.duration.observe(seconds)
        series.overhead.observe(seconds - upstream)
        if call.attempt_log:
            series.upstream.observe(upstream)
            self._count_attempts(call, model)
        if series.stream_times is not None and (first := call.answer_started) is not None:
            first_token, per_output_token = series.stream_times
            first_token.observe(first - call.started)
            output = row["completion_tokens"]
            if output is not None and output > 1:
                per_output_token.observe((ended - first) / (output - 1))
        if call.keeps_row:
            for counter, field in zip(series.tokens, ROW_TOKENS, strict=True):
                if count := row[field]:
                    counter.inc(count)
            if cost := row["cost_usd"]:
                series.cost.inc(float(cost))
        if call.error is not None and (reason := REFUSAL_REASONS.get(type(call.error))):
            self._count(self.refusals, reason).inc()

    def _call_series(self, key: tuple[Any, ...]) -> CallSeries:
        endpoint, model, provider, status_class, stream, tenant = key
        tenant_labels = (tenant,) if self.tenant_label else ()
        return CallSeries(
            requests=self._count(
                self.requests, endpoint, model, provider, f"{status_class}xx", *tenant_labels
            ),
            duration=self._histogram(self.duration, endpoint, model, provider),
            overhead=self._histogram(self.overhead, endpoint),
            upstream=self._histogram(self.upstream, model, provider),
            stream_times=(
                self._histogram(self.first_token, model, provider),
                self._histogram(self.per_output_token, model, provider),
            )
            if stream
            else None,
            tokens=tuple(
                self._count(self.tokens, model, provider, kind, *tenant_labels)
                for kind in TOKEN_TYPES
            ),
            cost=self._count(self.cost, model, provider, *tenant_labels),
        )

    def _count_attempts(self, call: Call, model: str) -> None:
        for attempt in call.attempt_log:
            route, error = attempt.route, attempt.error
            outcome = "ok" if error is None else (error.code or error.type)
            deployment = (
                route.deployment
                if route.requested_model in self.aliases
                else route.provider_name + "/*"
            )
            self._count(self.attempts, route.provider_name, deployment, outcome).inc()
        asked = call.requested_model if call.requested_model in self.aliases else model
        if (retries := len(call.attempt_log) - 1) > 0:
            self._count(self.retries, asked).inc(retries)
        if call.fallback_used:
            self._count(self.fallbacks, asked).inc()

    def _model_label(self, route: Route | None) -> str:
        if route is None:
            return ""
        if route.requested_model in self.aliases:
            return route.requested_model
        return route.provider_name + "/*"

    def _count(self, counter: Counter, *labels: str) -> PendingCount:
        key = (counter, *labels)
        pending = self._counts.get(key)
        if pending is None:
            pending = self._counts[key] = PendingCount(counter.labels(*labels))
            self._pending.append(pending)
        return pending

    def _histogram(self, histogram: Histogram, *labels: str) -> PendingHistogram:
        """Histogram children are few (no tenant label, no status): shared by call series."""
        key = (histogram, *labels)
        pending = self._histograms.get(key)
        if pending is None:
            pending = self._histograms[key] = PendingHistogram(histogram.labels(*labels))
            self._pending.append(pending)
        return pending

    def request_finished(self, path: str, status: int, tenant: str = "") -> None:
        """A ``/v1`` request answered without a call: refused before one (a bad key, an unknown
        URL, headers or a body over the limits), or not a call to a model (a model list)."""
        labels = (endpoint_of_path(path), "", "", f"{status // 100}xx")
        self._count(self.requests, *labels, *((tenant,) if self.tenant_label else ())).inc()

    # --- the ledger writer's thread ---------------------------------------------------------------

    def batch_written(self, seconds: float) -> None:
        self.ledger_batch.observe(seconds)

    def dead_lettered(self) -> None:
        self.ledger_dead_letters.inc()

    # --- what the runtime knows -----------------------------------------------------------------

    def refresh(self, runtime: Runtime) -> None:
        """Write what this worker counted since the last refresh, and its gauges, for whichever
        worker is scraped."""
        self.flush()
        ledger = runtime.ledger
        self.ledger_queue.set(ledger.backlog)
        self.ledger_spooled.set(ledger.spooled_rows)
        self.service_up.labels("database").set(0 if ledger.database_outage.down else 1)
        if runtime.shared_health is not None:
            self.service_up.labels("redis").set(0 if runtime.shared_health.outage.down else 1)

    def flush(self) -> None:
        """Write what the calls counted since the last flush to this worker's files."""
        for pending in self._pending:
            pending.flush()

    def scrape(self, runtime: Runtime) -> bytes:
        """Every worker's metrics, in Prometheus' text format."""
        self.refresh(runtime)
        multiprocess.forget_dead_workers(self.directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))
        registry.register(CoolingDown(runtime))
        return generate_latest(registry)

    async def start(self, runtime: Runtime) -> None:
        """Refresh this worker's gauges every ``REFRESH_SECONDS``; serve TOLLGATE_METRICS_ADDR
        unless another worker does."""
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever(runtime))
        if self.address is not None:
            self.listener = Listener(self.address, lambda: self.scrape(runtime))
            await self.listener.start()

    async def stop(self) -> None:
        """This worker's gauges leave the sum; its counters stay (they are the run's)."""
        if self.listener is not None:
            await self.listener.stop()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        self.flush()
        multiprocess.leave(self.directory, self._directory_lock)

    async def _refresh_forever(self, runtime: Runtime) -> None:
        while True:
            try:
                self.refresh(runtime)
            except OSError as error:  # the directory's disk: said once per interval, tried again
                self._disk.failed(error)
            else:
                self._disk.recovered()
            await asyncio.sleep(REFRESH_SECONDS)


class CoolingDown:
    """``tollgate_deployment_cooling_down``, read from the router's health when scraped: the
    answering worker's view, which with REDIS_URL is every worker's (``gateway.routing.shared``),
    as on the admin's health page."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tollgate_deployment_cooling_down",
            "1 while the router keeps calls away from a deployment of config.toml, else 0",
            labels=("deployment",),
        )
        runtime = self.runtime
        health = runtime.router.health
        now = health.clock()
        deployments = dict.fromkeys(
            route.deployment
            for alias in runtime.config.models
            for route in runtime.factory.routes(alias)
        )
        for deployment in deployments:
            breaker = health.breakers.get(deployment)
            cooling = breaker is not None and breaker.state(now) == "cooling"
            family.add_metric((deployment,), 1.0 if cooling else 0.0)
        yield family
