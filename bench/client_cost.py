"""Instructions per upstream round trip, by HTTP client: ``.venv/bin/python -m bench.client_cost``.

One JSON chat completion to the fake upstream (its own process), again and again on one kept
connection, with each client a gateway could use, counted by valgrind's callgrind as
``bench.instructions`` counts a whole call: a run of ``--calls`` and one of ``3 * --calls``, the
difference over the calls between them, the event loop's thread only.

- ``protocol``: an asyncio protocol on uvloop that writes a prepared request and reads the answer
  up to its ``Content-Length``: what any client must do (the loop, the socket), nothing else.
- ``aiohttp``: aiohttp's ``ClientSession``, as ``UpstreamTransport`` sets it up.
- ``tollgate``: the gateway's client as the providers use it, httpx over aiohttp
  (``UpstreamClient.upstream`` and ``send_upstream``, the answer read whole).
- ``httpx``: httpx with its own transport (httpcore), for comparison.

Why: issue #17, tenth pass. A whole call in process costs about 1.4 million instructions on the
loop (``bench.instructions``); replacing the upstream round trip with a canned answer saved a
third of them. This tells which layer that third is. Instructions are not time and leave out the
kernel (the socket's system calls cost every client alike); a layer's two runs go side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from bench.instructions import LOOP_THREAD, thread_totals

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("protocol", "aiohttp", "tollgate", "httpx")
PATH = "/v1/chat/completions"
BODY = b'{"model":"fake-gpt","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}

Fetch = Callable[[], Awaitable[bytes]]
Client = tuple[Fetch, Callable[[], Awaitable[object]]]
"""A client's round trip, and what closes its connection."""


class _Answers(asyncio.Protocol):
    """The ``protocol`` layer's connection: each answer's body, once ``Content-Length`` of it
    has come (the fake upstream's answers all say it)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, blank, rest = self.buffer.partition(b"\r\n\r\n")
        if not blank:
            return
        start = head.lower().index(b"\r\ncontent-length:") + len(b"\r\ncontent-length:")
        length = int(head[start : head.index(b"\r\n", start)])
        if len(rest) >= length and self.waiter is not None:
            self.buffer = rest[length:]
            self.waiter.set_result(rest[:length])


async def _protocol(base_url: str) -> Client:
    loop = asyncio.get_running_loop()
    netloc = base_url.split("//", 1)[1]
    host, port = netloc.rsplit(":", 1)
    transport, answers = await loop.create_connection(_Answers, host, int(port))
    head = "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    request = (
        f"POST {PATH} HTTP/1.1\r\nHost: {netloc}\r\n{head}Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY

    async def fetch() -> bytes:
        answers.waiter = loop.create_future()
        transport.write(request)
        return await answers.waiter

    async def close() -> None:
        transport.close()

    return fetch, close


async def _aiohttp(base_url: str) -> Client:
    import aiohttp

    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def fetch() -> bytes:
        async with session.post(
            base_url + PATH, data=BODY, headers=HEADERS, auto_decompress=False
        ) as answer:
            return await answer.read()

    return fetch, session.close


async def _tollgate(base_url: str) -> Client:
    import httpx

    from providers.http import UpstreamClient, UpstreamTransport

    client = UpstreamClient(transport=UpstreamTransport(), timeout=httpx.Timeout(60, connect=10))
    url = httpx.URL(base_url + PATH)

    async def fetch() -> bytes:
        answer = await client.send_upstream(client.upstream("POST", url, HEADERS, BODY, whole=True))
        return answer.content

    return fetch, client.aclose


async def _httpx(base_url: str) -> Client:
    import httpx

    client = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10))

    async def fetch() -> bytes:
        answer = await client.post(base_url + PATH, content=BODY, headers=HEADERS)
        return answer.content

    return fetch, client.aclose


CLIENTS: dict[str, Callable[[str], Awaitable[Client]]] = {
    "protocol": _protocol,
    "aiohttp": _aiohttp,
    "tollgate": _tollgate,
    "httpx": _httpx,
}


async def round_trips(layer: str, base_url: str, calls: int) -> list[bytes]:
    """``calls`` answers, one after another, by ``layer``'s client."""
    fetch, close = await CLIENTS[layer](base_url)
    try:
        return [await fetch() for _ in range(calls)]
    finally:
        await close()


def _callgrind(out: Path, layer: str, base_url: str, calls: int) -> subprocess.Popen[bytes]:
    cmd = [
        *("valgrind", "--tool=callgrind", "--separate-threads=yes", "--dump-instr=no"),
        f"--callgrind-out-file={out}.%p",
        *(sys.executable, "-m", "bench.client_cost", "--child", layer),
        *("--url", base_url, "--calls", str(calls)),
    ]
    with out.with_suffix(".log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def measure(layers: list[str], base_url: str, calls: int, tmp: Path) -> dict[str, float]:
    """Each layer's loop-thread instructions per round trip, two callgrind runs at a time."""
    found: dict[str, float] = {}
    for layer in layers:
        runs = {n: tmp / f"{layer}-n{n}" for n in (calls, 3 * calls)}
        started = [_callgrind(out, layer, base_url, n) for n, out in runs.items()]
        if any(process.wait() != 0 for process in started):
            logs = "\n".join(out.with_suffix(".log").read_text()[-2000:] for out in runs.values())
            raise RuntimeError(f"the {layer} runs failed:\n{logs}")
        few, many = (thread_totals(tmp.glob(f"{out.name}.*-*")) for out in runs.values())
        found[layer] = (many[LOOP_THREAD] - few[LOOP_THREAD]) / (2 * calls)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=300, help="round trips of the shorter run")
    p.add_argument("--layers", default=",".join(LAYERS), help=f"a subset of {LAYERS}")
    p.add_argument("--child", choices=LAYERS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        uvloop.run(round_trips(args.child, args.url, args.calls))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    from bench.processes import Processes
    from bench.stack import start_upstream

    processes = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="tollgate-client-cost-") as tmp:
            upstream = start_upstream(processes, Path(tmp), 0.0, 20, 0.0)
            found = measure(args.layers.split(","), upstream.base_url, args.calls, Path(tmp))
    finally:
        processes.stop_all()
    print("| client | instructions per round trip (loop thread) |\n|---|---:|")
    for layer, count in found.items():
        print(f"| {layer} | {count:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
