"""Routing against fake upstream instances scripted per test (tests/support/fake.py): the gaps
between retries honour the backoff and the upstream's retry-after, a deployment that cools down
is probed by one call once its time is up, and timeouts (first byte, idle, total) end what they
must, streams with an in-band error and their ledger row. Real processes on 127.0.0.1."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import fake

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows
from fake_upstream import run_fake_upstream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[str, str]]:
    with run_fake_upstream(name="a") as a, run_fake_upstream(name="b") as b:
        yield a, b


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None,
    upstreams: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    a, b = upstreams
    tmp = tmp_path_factory.mktemp("scripted")
    config = Path(tmp / "scripted.toml")
    config.write_text(f"""
[providers.a]
type = "openai"
base_url = "{a}/v1"
timeout_seconds = 1

[providers.b]
type = "openai"
base_url = "{b}/v1"

[models."retry-after"]
provider = "a"
input_per_mtok = 1.0

[models."retry-after-ms"]
provider = "a"

[models."backoff"]
provider = "a"

[models."stall"]
provider = "a"

[models."pair"]
deployments = [
  {{ provider = "a", upstream_model = "pair" }},
  {{ provider = "b", upstream_model = "pair", priority = 1 }},
]

[models."slow-start"]
deployments = [
  {{ provider = "a", upstream_model = "slow-start" }},
  {{ provider = "b", upstream_model = "slow-start", priority = 1 }},
]
first_byte_timeout_seconds = 0.5

[models."bounded"]
provider = "b"
total_timeout_seconds = 1

[router]
max_retries = 2
backoff_base_seconds = 0.01
retry_after_max_seconds = 5
cooldown_failures = 3
cooldown_seconds = 1
""")
    server = start_gateway_with_config(tmp, config)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(upstreams: tuple[str, str]) -> None:
    for url in upstreams:
        fake.reset(url)
        fake.script(url)


def post(server: GatewayServer, who: TenantKey, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/chat/completions", json=body, headers=who.headers, timeout=30
    )


def chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def arrivals(url: str) -> list[float]:
    return [request["at"] for request in fake.stats(url)["requests"]]


def test_retries_wait_for_the_upstreams_retry_after(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    a, _ = upstreams
    fake.script(a, fail_next=2, status=503, retry_after="1")
    answer = post(gateway, tenants["alice"], chat("retry-after"))
    assert answer.status_code == 200 and answer.headers["x-tollgate-attempts"] == "3"
    at = arrivals(a)
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    assert len(gaps) == 2 and all(gap >= 0.99 for gap in gaps), gaps


def test_retry_after_ms_is_honoured_too(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    a, _ = upstreams
    fake.script(a, fail_next=1, status=429, retry_after_ms="400")
    assert post(gateway, tenants["alice"], chat("retry-after-ms")).status_code == 200
    first, second = arrivals(a)
    assert second - first >= 0.4


def test_without_retry_after_the_backoff_is_short_and_bounded(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    a, _ = upstreams
    fake.script(a, fail_next=2, status=502)
    assert post(gateway, tenants["alice"], chat("backoff")).status_code == 200
    at = arrivals(a)
    assert len(at) == 3 and at[-1] - at[0] < 0.5  # base 0.01 s: 0.01, then at most 0.02 s


def test_a_cooled_down_deployment_is_probed_by_one_call_then_used_again(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    a, _ = upstreams
    fake.script(a, fail_next=3, status=500)
    for _ in range(3):  # each fails on a, then b serves it; a cools down after the third
        assert post(gateway, tenants["alice"], chat("pair")).status_code == 200
    served = [post(gateway, tenants["alice"], chat("pair")) for _ in range(3)]
    assert {answer.headers["x-tollgate-deployment"] for answer in served} == {"b/pair"}
    assert len(arrivals(a)) == 3  # cooling down: not tried
    time.sleep(1.2)  # cooldown_seconds = 1: half-open, and a has recovered
    probe = post(gateway, tenants["alice"], chat("pair"))
    assert probe.headers["x-tollgate-deployment"] == "a/pair"
    after = [post(gateway, tenants["alice"], chat("pair")) for _ in range(3)]
    assert {answer.headers["x-tollgate-deployment"] for answer in after} == {"a/pair"}


def test_a_first_byte_timeout_is_retried_on_another_deployment(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    a, _ = upstreams
    fake.script(a, first_byte_delay_ms=3000)
    started = time.monotonic()
    answer = post(gateway, tenants["alice"], chat("slow-start", stream=True))
    assert answer.status_code == 200 and answer.text.rstrip().endswith("data: [DONE]")
    assert answer.headers["x-tollgate-deployment"] == "b/slow-start"
    assert answer.headers["x-tollgate-attempts"] == "2"
    assert time.monotonic() - started < 2.5  # 0.5 s on a, then b at once


def test_a_stream_that_stalls_past_the_idle_timeout_ends_in_band_and_is_billed(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    a, _ = upstreams
    fake.script(a, stall_after_chunks=2, stall_seconds=5)  # provider a: timeout_seconds = 1
    started = time.monotonic()
    answer = post(gateway, tenants["alice"], chat("stall", stream=True))
    elapsed = time.monotonic() - started
    assert answer.status_code == 200 and elapsed < 4
    assert '"upstream_timeout"' in answer.text and "[DONE]" not in answer.text
    assert answer.headers["x-tollgate-attempts"] == "1"  # the stream had begun: not retried
    row = wait_for_rows(1, request_id=answer.headers["x-request-id"])[0]
    assert (row.status_code, row.error_type) == (504, "upstream_timeout")
    assert row.completion_tokens == 2 and row.usage_estimated  # the two chunks seen


def test_a_stream_past_its_total_timeout_ends_in_band_and_is_billed(
    gateway: GatewayServer, upstreams: tuple[str, str], tenants: dict[str, TenantKey]
) -> None:
    _, b = upstreams
    fake.script(b, stall_after_chunks=1, stall_seconds=3)  # "bounded": total 1 s, idle 600 s
    started = time.monotonic()
    answer = post(gateway, tenants["alice"], chat("bounded", stream=True))
    assert time.monotonic() - started < 2.5
    assert '"upstream_timeout"' in answer.text and "[DONE]" not in answer.text
    row = wait_for_rows(1, request_id=answer.headers["x-request-id"])[0]
    assert (row.status_code, row.completion_tokens) == (504, 1)
