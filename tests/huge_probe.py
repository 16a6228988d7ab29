"""Send a 30 MB body of one million tiny messages while a second client times small calls:
what the huge body does to everyone else (tests/test_e2e_huge_body.py, bench/huge_body.py)."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import httpx

HUGE_MESSAGES = 1_000_000


def huge_body(model: str) -> bytes:
    message = b'{"role":"user","content":"x"}'
    return (
        b'{"model":"%s","messages":[' % model.encode()
        + b",".join([message] * HUGE_MESSAGES)
        + b"]}"
    )


@dataclass
class Probe:
    """The huge call's answer and the latencies of the small calls made meanwhile."""

    status: int
    answer: dict[str, object]
    latencies: list[float]
    small_statuses: set[int]

    @property
    def max_ms(self) -> float:
        return max(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


def probe(
    base_url: str, key: str, model: str, body: bytes | None = None, upstream: bool = True
) -> Probe:
    """Send the huge body (or ``body``) while small calls are timed, from before it starts until
    after. The small calls are chat calls, or with ``upstream=False`` ``GET /v1/models``, which
    times the gateway alone (the fake upstream, one process, also has the big body to read)."""
    body = body if body is not None else huge_body(model)
    small = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    done = threading.Event()
    latencies: list[float] = []
    statuses: set[int] = set()

    def small_calls() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                if upstream:
                    answer = client.post("/v1/chat/completions", json=small)
                else:
                    answer = client.get("/v1/models")
                statuses.add(answer.status_code)
                latencies.append(time.perf_counter() - started)

    prober = threading.Thread(target=small_calls)
    prober.start()
    time.sleep(0.3)
    try:
        response = httpx.post(
            base_url + "/v1/chat/completions",
            content=body,
            headers={**headers, "content-type": "application/json"},
            timeout=60,
        )
        time.sleep(0.3)
    finally:
        done.set()
        prober.join()
    return Probe(response.status_code, response.json(), latencies, statuses)
