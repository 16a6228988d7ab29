"""wrk: the Lua script that shapes each request and reports a JSON line, and its runner.

wrk's ``done()`` hook prints one line ``WRK_JSON {...}``: completed requests, duration, bytes,
errors by kind, and latency percentiles (wrk measures in microseconds; latency is the time to the
last byte of the response, so for a stream it covers the whole stream).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.processes import Processes

WRK = shutil.which("wrk") or "/usr/bin/wrk"
MARKER = "WRK_JSON "

_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    "MARKER", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII


def request_body(stream: bool) -> str:
    body: dict[str, object] = {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Hello"}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def write_script(path: Path, api_key: str, stream: bool) -> Path:
    """The wrk script: POST the chat body with the tenant key, report in ``done()``."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(request_body(stream))}",
        'wrk.headers["Content-Type"] = "application/json"',
        f'wrk.headers["Authorization"] = {_lua_string("Bearer " + api_key)}',
    ]
    text = "\n".join(lines) + "\n" + _DONE.replace("MARKER", MARKER)
    path.write_text(text)
    return path


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    errors_connect: int
    errors_read: int
    errors_write: int
    errors_status: int
    errors_timeout: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    cpu_s: float | None = None
    """CPU time the target's workers used during the run (all their threads), when known."""
    machine_cpu_s: float | None = None
    """CPU time the whole machine used during the run: the workers, wrk, the fake upstream, the
    kernel's work for them, anything else running."""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return (
            self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_status
            + self.errors_timeout
        )

    @property
    def cpu_us_per_request(self) -> float | None:
        """The workers' CPU per completed request: steadier than req/s on a noisy machine,
        since it does not count the time the workers waited for a core."""
        return (
            self.cpu_s * 1e6 / self.requests if self.cpu_s is not None and self.requests else None
        )

    @property
    def others_us_per_request(self) -> float | None:
        """The CPU the rest of the machine used per completed request (wrk, the upstream...)."""
        if self.cpu_s is None or self.machine_cpu_s is None or not self.requests:
            return None
        return (self.machine_cpu_s - self.cpu_s) * 1e6 / self.requests

    @property
    def ok(self) -> int:
        """Completed requests with a non-error status (wrk counts status >= 400 as errors)."""
        return self.requests - self.errors_status

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "rps": round(self.rps, 1),
            "errors": self.errors,
            "cpu_us_per_request": self.cpu_us_per_request,
        }


def _parse(stdout: str) -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            d = json.loads(line[len(MARKER) :])
            return WrkResult(
                requests=d["requests"],
                duration_s=d["duration_us"] / 1e6,
                bytes=d["bytes"],
                errors_connect=d["connect"],
                errors_read=d["read"],
                errors_write=d["write"],
                errors_status=d["status"],
                errors_timeout=d["timeout"],
                p50_ms=d["p50_us"] / 1000,
                p95_ms=d["p95_us"] / 1000,
                p99_ms=d["p99_us"] / 1000,
                mean_ms=d["mean_us"] / 1000,
                max_ms=d["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no result line:\n{stdout}")


def threads_for(concurrency: int) -> int:
    return min(2, concurrency)  # wrk needs at least one connection per thread


def run_wrk(
    processes: Processes,
    url: str,
    script: Path,
    concurrency: int,
    duration_s: float,
    log_path: Path,
) -> WrkResult:
    """``wrk -t2 -c C -d Ds --timeout 10s -s SCRIPT URL`` in its own process group."""
    cmd = [
        WRK,
        f"-t{threads_for(concurrency)}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    process = processes.spawn(cmd, log_path=log_path, pipe_stdout=True)
    try:
        stdout, _ = process.communicate(timeout=duration_s + 30)
    finally:
        processes.stop(process, grace=2.0)
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited {process.returncode}: {stdout.decode(errors='replace')}")
    return _parse(stdout.decode(errors="replace"))


def wrk_version() -> str:
    try:
        result = subprocess.run([WRK, "--version"], capture_output=True, text=True, timeout=5)
    except OSError:
        return "missing"
    return (result.stdout or result.stderr).splitlines()[0].split(" [")[0] if result else ""
