"""Child processes for the benchmark: each in its own process group, all stopped in ``finally``.

Every process is started in a new session (so Ctrl-C in the terminal reaches only the runner,
which then stops everything in order) and stopped by signalling its whole process group: SIGTERM
first (uvicorn flushes the gateway's ledger on it), SIGKILL for whatever is left after a grace
period. Worker discovery and resident memory come from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


class StartupError(RuntimeError):
    """A service did not come up; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Processes:
    """Owns every child process the benchmark starts; ``stop_all`` ends them, newest first."""

    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self,
        cmd: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        pipe_stdout: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session. Output goes to ``log_path``; with ``pipe_stdout``
        stdout is a pipe for the caller to read and only stderr goes to the log."""
        with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else log,
                stderr=log,
                start_new_session=True,
            )
        self.children.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        """SIGTERM the process group, wait for every member, SIGKILL the stragglers."""
        stop_group(process, grace)
        if process in self.children:
            self.children.remove(process)

    def stop_all(self) -> None:
        while self.children:
            process = self.children.pop()
            with contextlib.suppress(Exception):
                stop_group(process, 15.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    pgid = process.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        if process.returncode is not None and not _group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def _readable(pipe: IO[bytes], timeout: float) -> bool:
    """Whether ``pipe`` has something to read within ``timeout`` seconds. By ``poll``, not
    ``select``, which refuses a descriptor numbered over 1024 (a process with many files open:
    a long test run)."""
    poller = select.poll()
    poller.register(pipe, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def read_ready_port(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """Wait for the fake upstream's ``READY <port>`` line."""
    assert process.stdout is not None
    line, deadline = b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not _readable(process.stdout, remaining):
            raise StartupError(f"fake upstream not ready after {timeout} s")
        data = os.read(process.stdout.fileno(), 256)
        if not data:
            raise StartupError(f"fake upstream exited early (code {process.wait()})")
        line += data
    if not line.startswith(b"READY "):
        raise StartupError(f"unexpected fake upstream output: {line!r}")
    return int(line.split()[1])


def wait_for_server(
    process: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    workers: int,
    started_line: str,
    timeout: float = 60.0,
) -> None:
    """Wait until every worker logged ``started_line`` and ``url`` answers (any HTTP status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartupError(
                f"{url}: server exited ({process.returncode}):\n{log_tail(log_path)}"
            )
        started = log_path.read_text(errors="replace").count(started_line)
        if started >= workers and _answers(url):
            return
        time.sleep(0.1)
    raise StartupError(f"{url}: not ready after {timeout} s:\n{log_tail(log_path)}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # 401, 405...: the server is answering
    except OSError:
        return False


# --- /proc ---------------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the field after the state


def worker_pids(server_pid: int, workers: int) -> list[int]:
    """The processes that serve requests: the server itself with one worker, else its children
    started by multiprocessing's ``spawn_main`` (not the resource tracker)."""
    if workers <= 1:
        return [server_pid]
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(int(entry.name)) == server_pid:
            pid = int(entry.name)
            if "spawn_main" in _cmdline(pid):
                children.append(pid)
    return sorted(children)


def granian_worker_pids(server_pid: int) -> list[int]:
    """granian's workers: the children of its main process that run granian."""
    return sorted(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and _ppid(int(entry.name)) == server_pid
        and "granian" in _cmdline(int(entry.name))
    )


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system, every thread) the processes have used so far; a process gone
    counts 0. The clock ticks at 10 ms: over a measurement of seconds, well under 1%."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        after_name = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
        total += int(after_name[11]) + int(after_name[12])  # utime, stime: the 14th, 15th fields
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has used so far, every CPU and every process (``/proc/stat``:
    all but idle and I/O wait; guest time is already in user time)."""
    with open("/proc/stat") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:9]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def rss_snapshot(pids: Sequence[int]) -> dict[str, int | None]:
    """RSS per worker (KiB, keyed by pid as text), as JSON wants it."""
    return {str(pid): rss_kib(pid) for pid in pids}
