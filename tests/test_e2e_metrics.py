"""Prometheus metrics end to end: the gateway under uvicorn with two workers, known traffic from
many connections at once, then ``/metrics`` scraped on the API port (bearer token) and on its own
address: one set, every worker's calls added up; and the services' gauges with a test-owned
Redis that is stopped and started again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from support.e2e import COMPLETION, GPT_TEST_COST, HELLO, PROMPT, chat_url
from support.metrics import Samples, parse, sample
from support.private_services import private_redis

from conftest import GatewayServer, TenantKey, free_port, start_gateway

pytestmark = pytest.mark.e2e

TOKEN = "metrics-e2e-token"
JSON_CALLS, STREAM_CALLS = 24, 12
CACHED, REASONING = 3, 2
GPT = {"model": "gpt-test", "provider": "fake"}
CHAT = {"endpoint": "chat.completions", **GPT}


@pytest.fixture(scope="module")
def two_workers(
    django_db_setup: None,
    django_db_blocker: object,
    fake_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayServer, str, Path]]:
    """The gateway with two workers, its metrics on the API port (TOKEN) and on an address of
    their own; and its metrics directory."""
    tmp = tmp_path_factory.mktemp("metrics")
    address = f"127.0.0.1:{free_port()}"
    env = {"TOLLGATE_METRICS_TOKEN": TOKEN, "TOLLGATE_METRICS_ADDR": address}
    server = start_gateway(tmp, fake_upstream, env=env, workers=2)
    yield server, f"http://{address}/metrics", tmp / "metrics"
    server.stop()


def scrape(server: GatewayServer) -> Samples:
    response = httpx.get(
        server.base_url + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return parse(response.text)


def scraped_when(
    read: Callable[[], Samples], ready: Callable[[Samples], bool], timeout: float = 10.0
) -> Samples:
    """Scrape until ``ready`` (or ``timeout``, and let the asserts say what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = read()
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def post(server: GatewayServer, who: TenantKey | None, **body: Any) -> httpx.Response:
    """One call on a connection of its own, so that either worker may take it."""
    headers = {"authorization": f"Bearer {who.raw if who else 'tg-wrong-key'}"}
    with httpx.Client(timeout=20) as client:
        return client.post(chat_url(server), headers=headers, json={"messages": HELLO, **body})


def requests_by_worker(directory: Path) -> dict[str, float]:
    """Each worker's own count of chat calls, from its counter file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        (family,) = [
            m for m in MultiProcessCollector.merge([str(path)]) if m.name == "tollgate_requests"
        ]
        counts[path.stem] = sum(s.value for s in family.samples)
    return counts


def test_two_workers_report_one_set_of_every_call_they_served(
    tenants: dict[str, TenantKey], two_workers: tuple[GatewayServer, str, Path]
) -> None:
    server, listener_url, directory = two_workers
    alice, charlie = tenants["alice"], tenants["charlie"]
    charlie.tenant.budget_usd, charlie.tenant.budget_period = Decimal("0.0001"), "total"
    charlie.tenant.save()
    calls = [{"model": "gpt-test"}] * JSON_CALLS + [{"model": "gpt-test", "stream": True}] * (
        STREAM_CALLS
    )
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: post(server, alice, **body), calls))
    assert [answer.status_code for answer in answers] == [200] * len(calls)
    assert post(server, charlie, model="gpt-test", max_tokens=1000).status_code == 429  # budget
    assert post(server, alice, model="fail-500").status_code == 502  # retried, then given up
    assert post(server, None, model="gpt-test").status_code == 401

    unknown = {"endpoint": "chat.completions", "model": "", "provider": ""}
    failed = {"endpoint": "chat.completions", "model": "fail-500", "provider": "fake"}
    expected = {  # once a second each worker writes what it counted: until both have written
        # every call (each of the last three may have been the other worker's)
        ("tollgate_requests_total", frozenset({**CHAT, "status_class": "2xx"}.items())): len(calls),
        ("tollgate_requests_total", frozenset({**CHAT, "status_class": "4xx"}.items())): 1,
        ("tollgate_requests_total", frozenset({**failed, "status_class": "5xx"}.items())): 1,
        ("tollgate_requests_total", frozenset({**unknown, "status_class": "4xx"}.items())): 1,
        ("tollgate_retries_total", frozenset({("model", "fail-500")})): 2,
    }
    samples = scraped_when(
        lambda: scrape(server), lambda s: all(s.get(k) == v for k, v in expected.items())
    )
    assert sample(samples, "tollgate_requests_total", **CHAT, status_class="2xx") == len(calls)
    assert sample(samples, "tollgate_requests_total", **CHAT, status_class="4xx") == 1
    assert sample(samples, "tollgate_requests_total", **failed, status_class="5xx") == 1
    assert sample(samples, "tollgate_requests_total", **unknown, status_class="4xx") == 1

    tokens = {"input": PROMPT, "output": COMPLETION, "cache_read": CACHED, "reasoning": REASONING}
    for kind, count in tokens.items():
        counted = sample(samples, "gen_ai_client_token_usage_total", **GPT, token_type=kind)
        assert counted == len(calls) * count, kind
    cost = sample(samples, "tollgate_cost_usd_total", **GPT)
    assert cost == pytest.approx(float(GPT_TEST_COST) * len(calls))

    # Histograms: every call of gpt-test (the refused one too) has a duration; the answered
    # ones an upstream time; the streams a time to first token and per output token.
    assert sample(samples, "gen_ai_server_request_duration_seconds_count", **CHAT) == len(calls) + 1
    assert sample(samples, "tollgate_upstream_duration_seconds_count", **GPT) == len(calls)
    for name in ("time_to_first_token", "time_per_output_token"):
        assert sample(samples, f"gen_ai_server_{name}_seconds_count", **GPT) == STREAM_CALLS
    overhead = "tollgate_gateway_overhead_seconds_count"
    assert sample(samples, overhead, endpoint="chat.completions") == len(calls) + 2
    assert sample(samples, "tollgate_refusals_total", reason="budget") == 1
    failure = {"provider": "fake", "deployment": "fake/fail-500"}
    assert (
        sample(
            samples, "tollgate_upstream_attempts_total", **failure, outcome="upstream_unavailable"
        )
        == 3
    )
    assert sample(samples, "tollgate_retries_total", model="fail-500") == 2
    assert sample(samples, "tollgate_service_up", service="database") == 1

    # One set: both workers served calls, and the scrape is their sum, whichever answers.
    by_worker = requests_by_worker(directory)
    assert len(by_worker) == 2 and all(count > 0 for count in by_worker.values()), by_worker
    everything = sum(v for (name, _), v in samples.items() if name == "tollgate_requests_total")
    assert sum(by_worker.values()) == everything >= len(calls) + 3
    on_its_own_address = parse(httpx.get(listener_url, timeout=10).text)
    for name in ("tollgate_requests_total", "gen_ai_client_token_usage_total"):
        assert {k: v for k, v in on_its_own_address.items() if k[0] == name} == {
            k: v for k, v in samples.items() if k[0] == name
        }


def test_the_api_port_wants_the_metrics_token(
    two_workers: tuple[GatewayServer, str, Path], gateway_server: GatewayServer
) -> None:
    server, _, _ = two_workers
    url = server.base_url + "/metrics"
    for headers in ({}, {"authorization": "Bearer not-the-token"}, {"authorization": TOKEN}):
        refused = httpx.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url, headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    # A gateway without TOLLGATE_METRICS_TOKEN does not serve them on its API port.
    assert httpx.get(gateway_server.base_url + "/metrics", timeout=10).status_code == 404


def test_redis_going_away_and_coming_back_shows_in_service_up(
    fake_upstream: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as redis:
        env = {"REDIS_URL": redis.url, "TOLLGATE_METRICS_TOKEN": TOKEN}
        server = start_gateway(tmp_path, fake_upstream, env=env)
        try:

            def redis_up(samples: Samples) -> float:
                return sample(samples, "tollgate_service_up", service="redis")

            assert redis_up(scraped_when(lambda: scrape(server), lambda s: redis_up(s) == 1)) == 1
            redis.stop()
            down = scraped_when(lambda: scrape(server), lambda s: redis_up(s) == 0)
            assert redis_up(down) == 0
            assert sample(down, "tollgate_service_up", service="database") == 1
            redis.start()
            assert redis_up(scraped_when(lambda: scrape(server), lambda s: redis_up(s) == 1)) == 1
        finally:
            server.stop()
