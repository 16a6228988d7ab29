"""Prometheus metrics (gateway.telemetry.metrics): what known calls leave in a scrape, through
the real ASGI application with the upstream faked at the HTTP boundary, and /metrics itself.

Every test gets a metrics directory of its own, as a fresh gateway process would
(``metrics_dir``); several workers adding up to one set is tests/test_e2e_metrics.py's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import Histogram, values
from support.inprocess import api_client
from support.metrics import Samples, parse, sample

from conftest import TenantKey, free_port, write_config
from gateway import runtime
from gateway.models import UsageRecord
from gateway.telemetry import multiprocess
from gateway.telemetry.metrics import OVERHEAD_BUCKETS, Metrics
from gateway.telemetry.pending import PendingHistogram
from gateway.telemetry.scrape import Listener
from gateway.usage import ledger as ledger_module
from gateway.usage.ledger import LedgerWriter
from providers.config import load_config
from providers.factory import ProviderFactory
from tollgate import asgi

PROMPT, COMPLETION, CACHED, REASONING = 11, 5, 3, 2
GPT_TEST_COST = (8 * 1.0 + 3 * 0.5 + 5 * 2.0) / 1e6
"""gpt-test: input 1.0 (cached input 0.5), output 2.0 USD per Mtok."""
EXTRA_MODELS = """
[models."flaky"]
provider = "fake"
upstream_model = "fake-flaky"
fallbacks = ["gpt-test"]
input_per_mtok = 1.0

[models."limited"]
provider = "fake"
upstream_model = "fake-limited"

[router]
backoff_base_seconds = 0
"""
"""``flaky`` always fails (500) and falls back to gpt-test; ``limited``'s upstream answers 429."""


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT,
        "completion_tokens": COMPLETION,
        "total_tokens": PROMPT + COMPLETION,
        "prompt_tokens_details": {"cached_tokens": CACHED},
        "completion_tokens_details": {"reasoning_tokens": REASONING},
    }


def upstream(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible upstream: fake-flaky fails (500), fake-limited is rate-limited
    (429), anything else answers with ``_usage`` (streamed: COMPLETION content chunks)."""
    body = orjson.loads(request.content)
    if body["model"] == "fake-flaky":
        return httpx.Response(500, json={"error": {"message": "down", "type": "server_error"}})
    if body["model"] == "fake-limited":
        error = {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}
        return httpx.Response(429, json={"error": error})
    base = {"id": "c", "created": 1, "model": body["model"]}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "hello"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return httpx.Response(
            200, json={**base, "object": "chat.completion", "choices": [choice], "usage": _usage()}
        )
    chunks = [
        {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        for delta in [{"role": "assistant"}] + [{"content": f"t{n} "} for n in range(COMPLETION)]
    ]
    chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage()})
    sse = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)
    return httpx.Response(
        200, content=sse + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
    )


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A metrics directory of this test's own: prometheus_client's values (one set of files per
    process, opened on first use) start anew there, as in a new gateway process."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    return directory


Install = Callable[..., runtime.Runtime]


@pytest.fixture
def metered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics_dir: Path
) -> Iterator[Install]:
    """Install a runtime with metrics whose upstream is ``upstream``; the ledger is flushed by
    hand."""
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    path = write_config(tmp_path / "config.toml", "http://upstream.test")
    path.write_text(path.read_text() + EXTRA_MODELS)
    config = load_config(path)

    def install(tenant_label: bool = False) -> runtime.Runtime:
        metrics = Metrics(metrics_dir, config.models, tenant_label=tenant_label)
        ledger = LedgerWriter(tmp_path / "ledger", autostart=False)
        ledger.observer = metrics
        current = runtime.Runtime(
            config=config,
            factory=ProviderFactory(config, transport=lambda _: httpx.MockTransport(upstream)),
            ledger=ledger,
            observers=(metrics,),
            metrics=metrics,
        )
        runtime.install(current)
        return current

    yield install
    runtime.install(None)


def scrape(current: runtime.Runtime) -> Samples:
    assert current.metrics is not None
    return parse(current.metrics.scrape(current).decode())


async def post(
    who: TenantKey | None, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> httpx.Response:
    headers = {"authorization": f"Bearer {who.raw if who else 'tg-not-a-key'}"}
    async with api_client() as client:
        return await client.post(path, json=body, headers=headers)


def chat(model: str = "gpt-test", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


CHAT = {"endpoint": "chat.completions", "model": "gpt-test", "provider": "fake"}
GPT = {"model": "gpt-test", "provider": "fake"}


# --- calls ----------------------------------------------------------------------------------------


async def test_a_json_call_counts_its_request_tokens_cost_and_times(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    for _ in range(3):
        assert (await post(tenants["alice"], chat())).status_code == 200
    samples = scrape(current)
    assert sample(samples, "tollgate_requests_total", **CHAT, status_class="2xx") == 3
    tokens = {"input": PROMPT, "output": COMPLETION, "cache_read": CACHED, "reasoning": REASONING}
    for kind, count in tokens.items():
        assert (
            sample(samples, "gen_ai_client_token_usage_total", **GPT, token_type=kind) == 3 * count
        )
    assert sample(samples, "gen_ai_client_token_usage_total", **GPT, token_type="cache_write") == 0
    assert sample(samples, "tollgate_cost_usd_total", **GPT) == pytest.approx(3 * GPT_TEST_COST)
    assert sample(samples, "gen_ai_server_request_duration_seconds_count", **CHAT) == 3
    assert (
        sample(samples, "tollgate_gateway_overhead_seconds_count", endpoint="chat.completions") == 3
    )
    assert sample(samples, "tollgate_upstream_duration_seconds_count", **GPT) == 3
    total = sample(samples, "gen_ai_server_request_duration_seconds_sum", **CHAT)
    upstream_time = sample(samples, "tollgate_upstream_duration_seconds_sum", **GPT)
    overhead = sample(samples, "tollgate_gateway_overhead_seconds_sum", endpoint="chat.completions")
    assert 0 < upstream_time < total and overhead == pytest.approx(total - upstream_time)
    attempts = {"provider": "fake", "deployment": "fake/fake-gpt", "outcome": "ok"}
    assert sample(samples, "tollgate_upstream_attempts_total", **attempts) == 3
    assert not any(name.startswith("gen_ai_server_time_to_first_token") for name, _ in samples)


async def test_a_stream_has_its_time_to_first_token_and_per_output_token(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    response = await post(tenants["alice"], chat(stream=True))
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    samples = scrape(current)
    assert sample(samples, "tollgate_requests_total", **CHAT, status_class="2xx") == 1
    assert sample(samples, "gen_ai_server_time_to_first_token_seconds_count", **GPT) == 1
    assert sample(samples, "gen_ai_server_time_per_output_token_seconds_count", **GPT) == 1
    first = sample(samples, "gen_ai_server_time_to_first_token_seconds_sum", **GPT)
    whole = sample(samples, "gen_ai_server_request_duration_seconds_sum", **CHAT)
    per_token = sample(samples, "gen_ai_server_time_per_output_token_seconds_sum", **GPT)
    assert 0 < first < whole
    assert per_token == pytest.approx((whole - first) / (COMPLETION - 1), rel=0.2, abs=1e-4)
    assert sample(samples, "gen_ai_client_token_usage_total", **GPT, token_type="output") == 5


async def test_refusals_count_by_reason_and_an_upstream_429_is_not_one(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    alice, bob, charlie = tenants["alice"], tenants["bob"], tenants["charlie"]
    alice.tenant.budget_usd = Decimal("0.0001")
    alice.tenant.budget_period = "total"
    await sync_to_async(alice.tenant.save)()
    bob.key.rpm_limit = 1
    await sync_to_async(bob.key.save)()
    charlie.key.allowed_models = "gpt-test"
    await sync_to_async(charlie.key.save)()

    assert (await post(alice, chat(max_tokens=1000))).status_code == 429  # reserves $0.002
    assert [(await post(bob, chat())).status_code for _ in range(2)] == [200, 429]
    assert (await post(charlie, chat("echo"))).status_code == 403
    limited = await post(alice, chat("limited"))  # the upstream's own 429, passed on
    assert limited.status_code == 429
    samples = scrape(current)
    for reason in ("budget", "rate_limit", "model_not_allowed"):
        assert sample(samples, "tollgate_refusals_total", reason=reason) == 1
    assert {k for k in samples if k[0] == "tollgate_refusals_total"} == {
        ("tollgate_refusals_total", frozenset({("reason", r)}))
        for r in ("budget", "rate_limit", "model_not_allowed")
    }
    limited_labels = {"endpoint": "chat.completions", "model": "limited", "provider": "fake"}
    assert sample(samples, "tollgate_requests_total", **limited_labels, status_class="4xx") == 1
    outcome = {"provider": "fake", "deployment": "fake/fake-limited"}
    assert (
        sample(
            samples, "tollgate_upstream_attempts_total", **outcome, outcome="rate_limit_exceeded"
        )
        == 3
    )  # the first and two retries


async def test_retries_and_a_fallback_are_counted_by_the_model_asked_for(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    response = await post(tenants["alice"], chat("flaky"))
    assert response.status_code == 200 and response.headers["x-tollgate-model"] == "gpt-test"
    samples = scrape(current)
    failed = {
        "provider": "fake",
        "deployment": "fake/fake-flaky",
        "outcome": "upstream_unavailable",
    }
    assert sample(samples, "tollgate_upstream_attempts_total", **failed) == 3
    ok = {"provider": "fake", "deployment": "fake/fake-gpt", "outcome": "ok"}
    assert sample(samples, "tollgate_upstream_attempts_total", **ok) == 1
    assert sample(samples, "tollgate_retries_total", model="flaky") == 3
    assert sample(samples, "tollgate_fallbacks_total", model="flaky") == 1
    # The call is counted where it was served.
    assert sample(samples, "tollgate_requests_total", **CHAT, status_class="2xx") == 1


async def test_requests_refused_before_a_call_count_without_a_model(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    assert (await post(None, chat())).status_code == 401
    assert (await post(tenants["bob"], chat(), path="/v1/no-such-thing")).status_code == 404
    async with api_client() as client:
        models = await client.get("/v1/models", headers=tenants["bob"].headers)
        too_big = await client.post(
            "/v1/chat/completions", content=b"{}", headers={"x-big": "x" * 70_000}
        )
    assert models.status_code == 200 and too_big.status_code == 431
    samples = scrape(current)
    unknown = {"model": "", "provider": ""}
    assert (
        sample(
            samples,
            "tollgate_requests_total",
            endpoint="chat.completions",
            **unknown,
            status_class="4xx",
        )
        == 2
    )
    assert (
        sample(samples, "tollgate_requests_total", endpoint="other", **unknown, status_class="4xx")
        == 1
    )
    assert (
        sample(samples, "tollgate_requests_total", endpoint="models", **unknown, status_class="2xx")
        == 1
    )


async def test_a_token_count_is_a_2xx_of_its_own_endpoint_not_a_499_and_spends_no_tokens(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "count me"}]}
    response = await post(tenants["alice"], body, path="/v1/messages/count_tokens")
    assert response.status_code == 200 and response.json()["input_tokens"] > 0
    samples = scrape(current)
    counted = {"endpoint": "messages.count_tokens", **GPT, "status_class": "2xx"}
    assert sample(samples, "tollgate_requests_total", **counted) == 1
    assert sample(samples, "gen_ai_client_token_usage_total", **GPT, token_type="input") == 0


async def test_labels_stay_bounded_whatever_model_names_clients_send(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered()
    assert (await post(tenants["alice"], chat("no-such-model-1"))).status_code == 404
    assert (await post(tenants["alice"], chat("no-such-model-2"))).status_code == 404
    for name in ("fake/anything-1", "fake/anything-2"):  # passthrough_models = true
        assert (await post(tenants["alice"], chat(name))).status_code == 200
    samples = scrape(current)
    unknown = {"endpoint": "chat.completions", "model": "", "provider": ""}
    assert sample(samples, "tollgate_requests_total", **unknown, status_class="4xx") == 2
    passthrough = {"endpoint": "chat.completions", "model": "fake/*", "provider": "fake"}
    assert sample(samples, "tollgate_requests_total", **passthrough, status_class="2xx") == 2
    ok = {"provider": "fake", "deployment": "fake/*", "outcome": "ok"}
    assert sample(samples, "tollgate_upstream_attempts_total", **ok) == 2
    assert not any(
        "anything" in value or "no-such" in value for _, labels in samples for _, value in labels
    )


async def test_the_tenant_label_when_the_setting_is_on(
    tenants: dict[str, TenantKey], metered: Install
) -> None:
    current = metered(tenant_label=True)
    await post(tenants["alice"], chat())
    await post(tenants["bob"], chat())
    await post(tenants["bob"], chat())
    samples = scrape(current)
    for who, calls in (("alice", 1), ("bob", 2)):
        assert (
            sample(samples, "tollgate_requests_total", **CHAT, status_class="2xx", tenant=who)
            == calls
        )
        assert (
            sample(
                samples, "gen_ai_client_token_usage_total", **GPT, token_type="input", tenant=who
            )
            == calls * PROMPT
        )
        assert sample(samples, "tollgate_cost_usd_total", **GPT, tenant=who) == pytest.approx(
            calls * GPT_TEST_COST
        )
    assert sample(samples, "gen_ai_server_request_duration_seconds_count", **CHAT) == 3  # no tenant


# --- the ledger writer, the services, the router --------------------------------------------------


async def test_the_ledger_gauges_and_the_database_going_away(
    tenants: dict[str, TenantKey], metered: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    current = metered()
    ledger = current.ledger
    ledger.retries = 1
    for _ in range(4):
        await post(tenants["alice"], chat())
    samples = scrape(current)
    assert sample(samples, "tollgate_ledger_queue_rows") == 4
    assert sample(samples, "tollgate_service_up", service="database") == 1
    assert ("tollgate_service_up", frozenset({("service", "redis")})) not in samples  # no REDIS_URL

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "insert_rows", down)
        patch.setattr(ledger_module, "database_answers", lambda: False)
        await sync_to_async(ledger.flush)()
        samples = scrape(current)
    assert sample(samples, "tollgate_ledger_queue_rows") == 0
    assert sample(samples, "tollgate_ledger_spooled_rows") == 4
    assert sample(samples, "tollgate_service_up", service="database") == 0
    assert sample(samples, "tollgate_ledger_batch_write_seconds_count") == 0

    await sync_to_async(ledger._replay_some)()  # the database answers: the spool is replayed
    assert await sync_to_async(UsageRecord.objects.count)() == 4
    orphan = {  # its tenant was deleted meanwhile: the database refuses it
        "created_at": datetime.now(UTC),
        "request_id": "req_orphan",
        "tenant_id": 987654,
        "api_key_id": tenants["alice"].key.pk,
        "requested_model": "gpt-test",
        "status_code": 200,
        "latency_ms": 1,
    }
    ledger.record(orphan)
    await post(tenants["alice"], chat())
    await sync_to_async(ledger.flush)()
    samples = scrape(current)
    assert sample(samples, "tollgate_ledger_spooled_rows") == 0
    assert sample(samples, "tollgate_service_up", service="database") == 1
    assert sample(samples, "tollgate_ledger_dead_letter_rows_total") == 1
    assert sample(samples, "tollgate_ledger_batch_write_seconds_count") == 1


async def test_a_deployment_cooling_down_is_1_and_the_others_0(metered: Install) -> None:
    current = metered()
    health = current.router.health
    for _ in range(current.config.router.cooldown_failures):
        health.failed("fake/fake-flaky", "upstream_unavailable")
    samples = scrape(current)
    assert sample(samples, "tollgate_deployment_cooling_down", deployment="fake/fake-flaky") == 1
    assert sample(samples, "tollgate_deployment_cooling_down", deployment="fake/fake-gpt") == 0
    deployments = {
        dict(labels)["deployment"]
        for name, labels in samples
        if name == "tollgate_deployment_cooling_down"
    }
    assert deployments == {
        route.deployment
        for alias in current.config.models
        for route in current.factory.routes(alias)
    }


def test_observations_kept_in_memory_flush_to_what_observe_gives(metrics_dir: Path) -> None:
    """The hot path adds up histogram observations by bucket and writes them once per refresh
    (``PendingHistogram``): the result is prometheus_client's own, bound values included."""
    direct = Histogram("direct", "", ["x"], buckets=OVERHEAD_BUCKETS, registry=None)
    kept = Histogram("kept", "", ["x"], buckets=OVERHEAD_BUCKETS, registry=None)
    pending = PendingHistogram(kept.labels("a"))
    for value in (0.0, 0.0005, 0.0007, 0.001, 0.3, 1.0, 7.0, 0.002, 0.0004):
        direct.labels("a").observe(value)
        pending.observe(value)
    pending.flush()
    pending.flush()  # nothing new: nothing added

    def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
        (family,) = histogram.collect()
        return {
            (s.name.removeprefix(family.name), s.labels.get("le", "")): s.value
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(kept) == samples(direct)
    assert samples(kept)[("_count", "")] == 9 and samples(kept)[("_bucket", "0.0005")] == 3


# --- /metrics -------------------------------------------------------------------------------------


async def test_metrics_on_the_api_port_want_the_bearer_token(
    tenants: dict[str, TenantKey], metered: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    metered()
    monkeypatch.setattr(asgi, "METRICS_TOKEN", "s3cret-token")
    await post(tenants["alice"], chat())
    async with api_client() as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"authorization": "Bearer s3cret-tokem"})
        posted = await client.post("/metrics", headers={"authorization": "Bearer s3cret-token"})
        right = await client.get("/metrics", headers={"authorization": "Bearer s3cret-token"})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "TOLLGATE_METRICS_TOKEN" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert posted.status_code == 405 and posted.headers["allow"] == "GET"
    assert right.status_code == 200 and right.headers["content-type"].startswith("text/plain")
    assert sample(parse(right.text), "tollgate_requests_total", **CHAT, status_class="2xx") == 1


async def test_without_a_token_the_api_port_does_not_serve_the_metrics(
    tenants: dict[str, TenantKey], metered: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    metered()
    monkeypatch.setattr(asgi, "METRICS_TOKEN", "")
    async with api_client() as client:
        response = await client.get("/metrics", headers={"authorization": "Bearer "})
    assert response.status_code == 404


async def test_the_listener_answers_and_a_second_worker_leaves_the_address_to_the_first() -> None:
    address = ("127.0.0.1", free_port())
    first = Listener(address, lambda: b"tollgate_up 1\n")
    second = Listener(address, lambda: b"never\n")
    await first.start()
    try:
        await second.start()
        assert first.server is not None and second.server is None
        async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as client:
            metrics = await client.get("/metrics")
            other = await client.get("/")
            posted = await client.post("/metrics")
        assert metrics.status_code == 200 and metrics.text == "tollgate_up 1\n"
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert other.status_code == 404 and posted.status_code == 405
    finally:
        await first.stop()


async def test_an_address_the_listener_cannot_take_stops_the_server_naming_it() -> None:
    listener = Listener(("192.0.2.1", free_port()), lambda: b"")  # no interface has it
    with pytest.raises(ImproperlyConfigured, match=r"TOLLGATE_METRICS_ADDR 192\.0\.2\.1:"):
        await listener.start()


# --- the directory --------------------------------------------------------------------------------


def test_the_first_process_of_a_run_empties_the_directory_and_later_ones_keep_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"a previous run's")
    first = multiprocess.claim(directory)
    assert list(directory.glob("*.db")) == []
    (directory / "counter_2.db").write_bytes(b"this run's")
    restarted_worker = multiprocess.claim(directory)
    assert [path.name for path in directory.glob("*.db")] == ["counter_2.db"]
    os.close(first)
    os.close(restarted_worker)
    next_run = multiprocess.claim(directory)
    assert list(directory.glob("*.db")) == []
    os.close(next_run)


def test_a_killed_workers_gauges_are_forgotten_and_its_counters_kept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    for name in (
        f"gauge_livesum_{dead_pid}.db",
        f"gauge_livemin_{dead_pid}.db",
        f"counter_{dead_pid}.db",
        f"gauge_livesum_{os.getpid()}.db",
    ):
        (tmp_path / name).write_bytes(b"")
    multiprocess.forget_dead_workers(tmp_path)
    assert sorted(path.name for path in tmp_path.glob("*.db")) == [
        f"counter_{dead_pid}.db",
        f"gauge_livesum_{os.getpid()}.db",
    ]


def test_metrics_off_leave_the_runtime_without_their_observer(settings: Any) -> None:
    settings.TOLLGATE_METRICS = False
    current = runtime.build_runtime()
    assert current.metrics is None
    assert not any(isinstance(observer, Metrics) for observer in current.observers)
    assert current.ledger.observer is None
