"""The gateway's own cost per call, in process: ``.venv/bin/python -m bench.inprocess``.

Calls ``tollgate.asgi.application`` directly, with no server and no load generator in the
process, ``--calls`` chat completions at ``--concurrency`` against the fake upstream (its own
process), and prints the CPU time per call: of the whole process (the ledger writer included)
and of the event loop's thread alone. On a noisy machine these move far less than req/s under
wrk, since a wait for a core is not counted: the tool for comparing two versions of the hot path
(run each a few times, alternating). It is not a target of #17; ``make bench`` measures those.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.processes import Processes
from bench.stack import django_env, limit_tenant, prepare_database, start_upstream, write_config
from bench.wrk import request_body

WARM_UP_MAX = 1000
"""The warm-up's calls: as many as a round's, up to this."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=4000, help="calls per round")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5, help="rounds after a warm-up; medians shown")
    return p.parse_args(argv)


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a ``POST`` to ``path`` from 127.0.0.1, as a server would hand it over
    (the tests that drive the application by hand use it too)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _call(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    scope = post_scope("/v1/chat/completions", headers)
    sent = False
    done = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client stays connected until the answer ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    return status


async def _round(app: Any, key: str, calls: int, concurrency: int) -> tuple[float, float, float]:
    body = request_body(stream=False).encode()
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    left = calls
    failed = 0

    async def client() -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            if await _call(app, headers, body) != 200:
                failed += 1

    process, thread, wall = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    process, thread = time.process_time() - process, time.thread_time() - thread
    if failed:
        raise SystemExit(f"{failed} of {calls} calls failed")
    return process * 1e6 / calls, thread * 1e6 / calls, calls / (time.perf_counter() - wall)


async def _measure(args: argparse.Namespace, key: str) -> None:
    from tollgate import asgi  # Django is set up by this import

    application, get_runtime = asgi.application, asgi.runtime.get_runtime
    await get_runtime().start()
    try:
        await _round(application, key, min(args.calls, WARM_UP_MAX), args.concurrency)  # warm-up
        results = [
            await _round(application, key, args.calls, args.concurrency) for _ in range(args.rounds)
        ]
    finally:
        await get_runtime().aclose()
    for label, index in (("process CPU", 0), ("loop thread CPU", 1)):
        values = [r[index] for r in results]
        print(
            f"{label:>16}: {statistics.median(values):6.0f} µs/call median "
            f"({', '.join(f'{v:.0f}' for v in values)})"
        )
    print(f"{'calls/s':>16}: {statistics.median(r[2] for r in results):6.0f} median (wall clock)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="tollgate-inprocess-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            upstream = start_upstream(processes, tmp, 0.0, 20, 0.0)
            config = write_config(tmp / "config.toml", upstream.base_url)
            env = django_env(config, tmp / "var", "tollgate.settings")
            env["TOLLGATE_LOG_FORMAT"] = "json"
            key = prepare_database(env)
            limit_tenant(env)  # as make bench: every call admitted and settled against limits
            os.environ.update(env)
            uvloop.install()  # as the servers run it
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
                asyncio.run(_measure(args, key))  # the request log: written, not shown
        finally:
            processes.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
