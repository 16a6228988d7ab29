"""What a huge request body does to everyone else: the 30 MB body of one million tiny messages
of issue #10, and the worst bodies within the limits (the most JSON values, 30 MB strings).

Starts the fake upstream and the gateway (uvicorn, one worker, the production key cache), sends
each body to ``/v1/chat/completions`` while a client in this process times small chat calls back
to back, then again while wrk (another process, one connection) calls ``GET /v1/models``, which
needs no upstream: wrk's worst latency is the longest the gateway's event loop was held. Prints
the answers, the latencies (max, p99) and the gateway's RSS before and after. Needs wrk (``make
bench`` installs it).

    .venv/bin/python bench/huge_body.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test helpers
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench.*

import httpx

from huge_probe import huge_body, probe


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

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tollgate.settings")
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
        env = {"DATABASE_URL": os.environ["DATABASE_URL"], "TOLLGATE_AUTH_CACHE_SECONDS": "5"}
        server = start_gateway(Path(tmp), upstream, env=env)  # the production key cache
        try:
            for _ in range(50):  # warm up
                httpx.post(
                    server.base_url + "/v1/chat/completions",
                    headers={"authorization": f"Bearer {raw}"},
                    json={"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
                )
            lua = Path(tmp) / "models.lua"
            lua.write_text(f'wrk.headers["Authorization"] = "Bearer {raw}"\n')
            for name, body in bodies("gpt-test"):
                before = rss_mb(server.process.pid)
                result = probe(server.base_url, raw, "gpt-test", body)
                time.sleep(1)
                after = rss_mb(server.process.pid)
                print(
                    f"{name} ({len(body) / 1e6:.0f} MB): HTTP {result.status}; "
                    f"{len(result.latencies)} chat calls meanwhile (client in this process), "
                    f"max {result.max_ms:.1f} ms, p99 {result.p99_ms:.1f} ms; "
                    f"RSS {before:.0f} -> {after:.0f} MB"
                )
                stall = loop_stall(server.base_url, lua, body, raw)
                print(f"  GET /v1/models from wrk meanwhile: {stall}")
        finally:
            server.stop()


def loop_stall(base_url: str, lua: Path, body: bytes, key: str) -> str:
    """wrk (another process, one connection) calls GET /v1/models, which needs no upstream,
    while ``body`` is sent: its worst latency is the longest the event loop was held."""
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c1", "-d4s", "--latency", "-s", str(lua), base_url + "/v1/models"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    httpx.post(
        base_url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=60,
    )
    out, _ = wrk.communicate(timeout=30)
    latency = next(line.split() for line in out.splitlines() if line.strip().startswith("Latency"))
    p99 = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("99%"))
    return f"max {latency[3]}, p99 {p99}"


def bodies(model: str) -> list[tuple[str, bytes]]:
    """The finding's body, and the worst a body within the limits can be: the most values, the
    largest strings (ASCII, then two bytes a character, which cost more to re-encode)."""
    part = {"type": "text", "text": "x"}
    dense = [{"role": "user", "content": [part] * 5} for _ in range(2_700)]
    return [
        ("a million tiny messages", huge_body(model)),
        ("just under 50,000 values", chat(model, dense)),
        ("one 30 MB ASCII string", chat(model, [{"role": "user", "content": "ab, " * 7_500_000}])),
        (
            "one 30 MB non-ASCII string",
            chat(model, [{"role": "user", "content": "é" * 15_000_000}]),
        ),
    ]


def chat(model: str, messages: list[dict[str, object]]) -> bytes:
    import orjson

    return orjson.dumps({"model": model, "messages": messages})


if __name__ == "__main__":
    main()
