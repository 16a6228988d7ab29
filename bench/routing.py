"""Routing under bad upstreams: one model served by three deployments, one healthy, one failing
half of its calls (503), one down (it closes every connection unanswered). 10,000 chat calls at
concurrency 50 through the gateway (uvicorn, one worker, the production key cache) must all
succeed: every failure is one a retry can avoid. Prints the statuses, how many attempts the calls
took, which deployment served them, the throughput, and the ledger's count of attempts; then the
same 10,000 calls with only the healthy deployment, for the cost of the bad ones. The bad
deployments cool down for 2 s only, so that they are probed again and again during the run.

Last, session affinity: 200 sessions of 10 calls over three deployments, each with its own prompt
cache (the fake upstream's ``cache`` script), with and without a ``prompt_cache_key``: the share
of calls that hit a cache.

    .venv/bin/python -m bench.routing [--calls 10000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test helpers
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.*

import httpx
from httpx_aiohttp import AiohttpTransport

BODY = {"model": "routed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def config_text(healthy: str, flaky: str, down: str, deployments: str) -> str:
    return f"""
[providers.healthy]
type = "openai"
base_url = "{healthy}/v1"

[providers.flaky]
type = "openai"
base_url = "{flaky}/v1"

[providers.down]
type = "openai"
base_url = "{down}/v1"
connect_timeout_seconds = 1

[models."routed"]
deployments = [{deployments}]
input_per_mtok = 1.0
output_per_mtok = 2.0

[router]
cooldown_seconds = 2  # short: the bad deployments are probed again and again during the run
"""


async def drive(base_url: str, key: str, calls: int, concurrency: int) -> dict[str, Any]:
    statuses: collections.Counter[int] = collections.Counter()
    attempts: collections.Counter[str] = collections.Counter()
    served: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    remaining = calls
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {key}"}
    transport = AiohttpTransport(limits=limits)  # httpx's own transport is the bottleneck here
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await client.post("/v1/chat/completions", json=BODY, headers=headers)
                statuses[response.status_code] += 1
                attempts[response.headers.get("x-tollgate-attempts", "-")] += 1
                served[response.headers.get("x-tollgate-deployment", "-")] += 1
                if response.status_code != 200 and len(errors) < 5:
                    errors.append(response.text[:300])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "calls": calls,
        "seconds": elapsed,
        "rps": calls / elapsed,
        "statuses": dict(statuses),
        "attempts": dict(sorted(attempts.items())),
        "served": dict(served),
        "errors": errors,
    }


async def sessions(
    base_url: str, key: str, count: int, turns: int, concurrency: int, affinity: bool
) -> dict[str, int]:
    """``count`` sessions of ``turns`` calls each, all sessions at once up to ``concurrency``:
    with ``affinity`` each carries its ``prompt_cache_key``; without, the session is only in
    the prompt (the fake upstream's cache key then), so the router cannot see it."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {key}"}
    totals = {"calls": 0, "cache_hits": 0, "cached_tokens": 0, "prompt_tokens": 0}
    gate = asyncio.Semaphore(concurrency)
    transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as client:

        async def session(n: int) -> None:
            body: dict[str, Any] = {
                "model": "cached",
                "messages": [{"role": "user", "content": f"session {n}: a long shared prefix"}],
            }
            if affinity:
                body["prompt_cache_key"] = f"session-{n}"
            for _ in range(turns):
                async with gate:
                    response = await client.post("/v1/chat/completions", json=body, headers=headers)
                usage = response.json()["usage"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                totals["calls"] += 1
                totals["cache_hits"] += cached > 0
                totals["cached_tokens"] += cached
                totals["prompt_tokens"] += usage["prompt_tokens"]

        await asyncio.gather(*(session(n) for n in range(count)))
    return totals


def report(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(f"  {result['calls']:,} calls in {result['seconds']:.1f} s: {result['rps']:,.0f} calls/s")
    print(f"  statuses: {result['statuses']}")
    print(f"  attempts per call: {result['attempts']}")
    print(f"  served by: {result['served']}")
    for error in result["errors"]:
        print(f"  error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    import django

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # A database of the run's own, whatever DATABASE_URL the environment names: its gateways
        # read it too.
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
        django.setup()
        from django.core.management import call_command
        from django.db.models import Count, Sum
        from support import fake

        from conftest import start_gateway_with_config
        from fake_upstream import run_fake_upstream
        from gateway.models import ApiKey, Tenant, UsageRecord

        healthy = stack.enter_context(run_fake_upstream(name="healthy"))
        flaky = stack.enter_context(
            run_fake_upstream(name="flaky", fail_rate=0.5, fail_status=503, seed=1)
        )
        down = stack.enter_context(run_fake_upstream(name="down", down=True))
        call_command("migrate", verbosity=0)
        _, key = ApiKey.objects.issue(Tenant.objects.create(name="bench"), name="bench")
        env = {"DATABASE_URL": os.environ["DATABASE_URL"], "TOLLGATE_AUTH_CACHE_SECONDS": "5"}
        results = {}
        for name, deployments in (
            (
                "three deployments: healthy, flaky (50% 503), down",
                '{ provider = "healthy", upstream_model = "m" }, '
                '{ provider = "flaky", upstream_model = "m" }, '
                '{ provider = "down", upstream_model = "m" }',
            ),
            ("one healthy deployment", '{ provider = "healthy", upstream_model = "m" }'),
        ):
            config = tmp / f"routing-{len(results)}.toml"
            config.write_text(config_text(healthy, flaky, down, deployments))
            run_dir = tmp / f"run-{len(results)}"
            run_dir.mkdir()
            server = start_gateway_with_config(run_dir, config, env=env)
            try:
                result = asyncio.run(drive(server.base_url, key, args.calls, args.concurrency))
            finally:
                server.stop()
            report(name, result)
            results[name] = result
        # Session affinity: three healthy deployments, each with its own prompt cache.
        caches = [stack.enter_context(run_fake_upstream(name=f"cache-{i}")) for i in range(3)]
        cache_config = tmp / "routing-cache.toml"
        cache_config.write_text(
            "".join(
                f'[providers.cache{i}]\ntype = "openai"\nbase_url = "{url}/v1"\n\n'
                for i, url in enumerate(caches)
            )
            + '[models."cached"]\ndeployments = ['
            + ", ".join(f'{{ provider = "cache{i}", upstream_model = "m" }}' for i in range(3))
            + "]\ninput_per_mtok = 1.0\n"
        )
        run_dir = tmp / "run-cache"
        run_dir.mkdir()
        server = start_gateway_with_config(run_dir, cache_config, env=env)
        try:
            for affinity in (True, False):
                for url in caches:
                    fake.script(url, cache=True)  # an empty prompt cache
                totals = asyncio.run(
                    sessions(server.base_url, key, 200, 10, args.concurrency, affinity)
                )
                share = totals["cached_tokens"] / max(totals["prompt_tokens"], 1)
                print(
                    f"\nprompt caches, 200 sessions x 10 calls, "
                    f"{'with' if affinity else 'without'} affinity: "
                    f"{totals['cache_hits'] / totals['calls']:.1%} of calls hit a cache, "
                    f"{share:.1%} of prompt tokens read from cache"
                )
        finally:
            server.stop()
        ledger = UsageRecord.objects.aggregate(rows=Count("id"), attempts=Sum("attempts"))
        print(f"\nledger: {ledger['rows']:,} rows, {ledger['attempts']:,} attempts in all")
        bad = results["three deployments: healthy, flaky (50% 503), down"]
        failed = sum(n for status, n in bad["statuses"].items() if status != 200)
        print(f"client errors that a retry could have avoided: {failed} (target 0)")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
