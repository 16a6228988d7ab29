"""Time to first and last byte of a streamed completion, one request at a time.

A deliberately small HTTP/1.1 client on raw asyncio streams (one keep-alive connection, chunked
bodies decoded by hand), so its own overhead is tiny and identical for every target: the
difference between two targets is what the server in between adds.

TTFB is the time from writing the request to reading the first chunk of the response body (the
first SSE event), not merely the status line: a server could send its headers early. TTLB is the
time to the terminating zero-length chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from bench.report import percentile


@dataclass
class StreamTimings:
    ttfb_ms: list[float] = field(default_factory=list)
    ttlb_ms: list[float] = field(default_factory=list)
    errors: int = 0
    completed: int = 0  # complete 200 streams, warm-up included (what the ledger must hold)
    first_error: str = ""

    def summary(self) -> dict[str, float | int | str]:
        return {
            "requests": len(self.ttlb_ms),
            "errors": self.errors,
            "ttfb_p50_ms": round(percentile(self.ttfb_ms, 50), 3),
            "ttfb_p95_ms": round(percentile(self.ttfb_ms, 95), 3),
            "ttlb_p50_ms": round(percentile(self.ttlb_ms, 50), 3),
            "ttlb_p95_ms": round(percentile(self.ttlb_ms, 95), 3),
            **({"first_error": self.first_error} if self.first_error else {}),
        }


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _one(conn: _Connection, request: bytes) -> tuple[float, float, str, bool]:
    """One request on ``conn``: (TTFB ms, TTLB ms, error or "" for a complete 200 stream,
    keep-alive)."""
    reader = conn.reader
    start = time.perf_counter()
    conn.writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    keep = headers.get("connection") != "close"
    first = 0.0
    tail = b""
    if "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            data = await reader.readexactly(size + 2)
            if not first:
                first = time.perf_counter()
            tail = (tail + data[:-2])[-64:]
    else:
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        first = time.perf_counter()
        tail = data[-64:]
    end = time.perf_counter()
    error = "" if status == 200 and b"[DONE]" in tail else f"HTTP {status}, ends {tail!r}"
    return (first - start) * 1000, (end - start) * 1000, error, keep


async def _measure(
    host: str, port: int, path: str, body: bytes, api_key: str, count: int, warmup: int
) -> StreamTimings:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {api_key}\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    timings = StreamTimings()
    conn: _Connection | None = None
    try:
        for i in range(warmup + count):
            if conn is None:
                conn = _Connection(*await asyncio.open_connection(host, port))
            ttfb = ttlb = 0.0
            try:
                ttfb, ttlb, error, keep = await asyncio.wait_for(_one(conn, request), timeout=10)
            except (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
                error, keep = repr(exc), False
            ok = not error
            timings.completed += ok
            if error and not timings.first_error:
                timings.first_error = error
            if i >= warmup:
                if ok:
                    timings.ttfb_ms.append(ttfb)
                    timings.ttlb_ms.append(ttlb)
                else:
                    timings.errors += 1
            if not keep:
                await conn.close()
                conn = None
    finally:
        if conn is not None:
            await conn.close()
    return timings


def measure_stream(
    base_url: str, path: str, body: bytes, api_key: str, count: int = 200, warmup: int = 20
) -> StreamTimings:
    """``count`` sequential streamed requests (after ``warmup`` discarded ones)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    return asyncio.run(_measure(host, int(port), path, body, api_key, count, warmup))
