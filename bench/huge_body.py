"""What a 30 MB body of one million tiny messages does to everyone else.

Starts the fake upstream and the gateway (uvicorn, one worker), sends the huge body to
``/v1/chat/completions`` while a second client times small calls back to back, and prints the
huge call's answer, the small calls' latency (max, p99) and the gateway's RSS before and after.

    .venv/bin/python bench/huge_body.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx

from huge_probe import probe


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    import os
    import tempfile

    import django

    django.setup()
    from django.core.management import call_command

    from conftest import start_gateway
    from fake_upstream import run_fake_upstream
    from gateway.models import ApiKey, Tenant

    with tempfile.TemporaryDirectory() as tmp, run_fake_upstream() as upstream:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
        from django.db import connections

        connections["default"].settings_dict["NAME"] = f"{tmp}/bench.sqlite3"
        call_command("migrate", verbosity=0)
        _, raw = ApiKey.objects.issue(Tenant.objects.create(name="bench"), name="bench")
        server = start_gateway(
            Path(tmp), upstream, env={"DATABASE_URL": os.environ["DATABASE_URL"]}
        )
        try:
            for _ in range(50):  # warm up
                httpx.post(
                    server.base_url + "/v1/chat/completions",
                    headers={"authorization": f"Bearer {raw}"},
                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
                )
            before = rss_mb(server.process.pid)
            result = probe(server.base_url, raw, "gpt-test")
            time.sleep(1)
            after = rss_mb(server.process.pid)
        finally:
            server.stop()
    print(f"huge body: HTTP {result.status} {result.answer}")
    print(
        f"small calls during it: {len(result.latencies)}, "
        f"statuses {sorted(result.small_statuses)}, max {result.max_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms"
    )
    print(f"gateway RSS: before {before:.0f} MB, after {after:.0f} MB")


if __name__ == "__main__":
    main()
