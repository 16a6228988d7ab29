"""The client address behind a load balancer: ``X-Forwarded-For`` is believed only from the
proxies of ``FORWARDED_ALLOW_IPS`` (under granian by ``tollgate.asgi:granian_application``, under
uvicorn by uvicorn itself), and the failed-authentication throttle counts that address: one
client guessing keys is throttled, not everyone behind the same load balancer."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import GatewayServer, start_gateway

pytestmark = pytest.mark.e2e

WRONG_KEY = {"Authorization": "Bearer tg-" + "x" * 43}


def statuses(server: GatewayServer, forwarded_for: str, count: int) -> list[int]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        return [
            client.get(
                "/v1/models", headers={**WRONG_KEY, "X-Forwarded-For": forwarded_for}
            ).status_code
            for _ in range(count)
        ]


@pytest.mark.parametrize(
    ("trusted", "each_client_counted_apart"),
    [("127.0.0.1", True), ("10.0.0.1", False)],
    ids=["from-a-trusted-proxy", "from-anyone-else"],
)
def test_the_throttle_counts_the_forwarded_client_only_behind_a_trusted_proxy(
    tmp_path: Path, fake_upstream: str, trusted: str, each_client_counted_apart: bool
) -> None:
    server = start_gateway(
        tmp_path,
        fake_upstream,
        env={
            "FORWARDED_ALLOW_IPS": trusted,  # the test's requests come from 127.0.0.1
            "TOLLGATE_AUTH_FAILURE_BURST": "5",
            "TOLLGATE_AUTH_FAILURE_RATE": "0.01",
        },
    )
    try:
        guesser = statuses(server, "203.0.113.1", 6)
        assert guesser == [401] * 5 + [429]
        # Another client behind the same proxy: its own allowance, if the proxy is believed.
        other = statuses(server, "203.0.113.2", 1)
        assert other == ([401] if each_client_counted_apart else [429])
    finally:
        server.stop()
