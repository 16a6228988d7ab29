"""uvicorn's event loop (``tollgate/uvicorn_loop.py``): a turn accepts every waiting connection.

The loop's servers run here on 127.0.0.1 with real sockets; the callers connect with blocking
sockets, whose handshake the kernel completes before the server accepts (as wrk's 200 connections
wait in the accept queue of a busy worker).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from bench.processes import free_port, wait_for_server
from tollgate import uvicorn_loop

ROOT = Path(__file__).resolve().parent.parent


class Echo(asyncio.Protocol):
    """Counts the connections made; answers every chunk with its own bytes."""

    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).made += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def run(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], main: Coroutine[Any, Any, Any]
) -> Any:
    loop = loop_factory()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


def connect(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


async def accepted_after_turns(server: Any, callers: int, turns: int) -> int:
    """Connect ``callers`` at once while the loop is not running, then let it make ``turns``
    turns: how many connections did the server's protocol see made?"""
    Echo.made = 0
    port = server.sockets[0].getsockname()[1]
    clients = connect(port, callers)  # the loop is here, not polling: they all wait to be accepted
    try:
        for _ in range(turns):
            await asyncio.sleep(0)
        return Echo.made
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(
    ("loop_factory", "at_least", "at_most"),
    [(uvicorn_loop.new_event_loop, 100, 100), (uvloop.new_event_loop, 0, 20)],
    ids=["tollgate loop: all at once", "stock uvloop: one a turn"],
)
def test_a_turn_of_the_loop_accepts_every_connection_waiting(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], at_least: int, at_most: int
) -> None:
    """The stock case shows what the loop mends (and that the test can tell them apart)."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=512)
        try:
            return await accepted_after_turns(server, 100, turns=10)
        finally:
            server.close()
            await server.wait_closed()

    made = run(loop_factory, main())
    assert at_least <= made <= at_most


def test_a_connection_accepted_is_served_and_the_server_closes() -> None:
    async def main() -> tuple[bytes, bool, bool]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, uvicorn_loop.AcceptingServer) and server.is_serving()
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        echoed = await reader.readexactly(4)
        writer.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 1)
        listening = server.sockets[0].fileno() != -1
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        return echoed, server.is_serving(), listening

    assert run(uvicorn_loop.new_event_loop, main()) == (b"ping", False, False)


def test_a_socket_given_is_served_as_it_is_bound() -> None:
    """uvicorn's supervisor binds the socket its workers share, and hands it over (``sock=``)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, sock=sock, backlog=64)
        assert isinstance(server, uvicorn_loop.AcceptingServer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"pong")
        echoed = await reader.readexactly(4)
        writer.close()
        server.close()
        return echoed

    assert run(uvicorn_loop.new_event_loop, main()) == b"pong"


def test_a_unix_socket_keeps_uvloops_own_server(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "s"))

    async def main() -> str:
        server = await asyncio.get_running_loop().create_server(Echo, sock=sock)
        server.close()
        return type(server).__module__

    assert run(uvicorn_loop.new_event_loop, main()).startswith("uvloop")


def test_out_of_file_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE leaves the socket readable: accepting pauses (the loop would spin otherwise) and
    resumes after ACCEPT_RETRY_SECONDS, when the callers still waiting are served."""
    monkeypatch.setattr(uvicorn_loop, "ACCEPT_RETRY_SECONDS", 0.05)

    real_accept = socket.socket.accept

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        server: Any = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        failed = asyncio.Event()

        def accept(sock: socket.socket) -> tuple[socket.socket, Any]:
            if not failed.is_set():  # the first attempt: out of file descriptors
                failed.set()
                raise OSError(errno.EMFILE, "Too many open files")
            return real_accept(sock)

        Echo.made = 0
        monkeypatch.setattr(socket.socket, "accept", accept)
        clients = connect(port, 3)
        await failed.wait()
        await asyncio.sleep(0.02)
        paused = Echo.made  # nothing accepted meanwhile, though the socket stays readable
        await asyncio.sleep(0.2)
        resumed = Echo.made
        for client in clients:
            client.close()
        server.close()
        return paused, resumed

    assert run(uvicorn_loop.new_event_loop, main()) == (0, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_serves_on_the_loop(tmp_path: Path, workers: int) -> None:
    """``--loop tollgate.uvicorn_loop:new_event_loop``, as ``make serve SERVER=uvicorn`` gives it:
    uvicorn binds its address (one worker) or hands its workers the socket its supervisor bound
    (two), serves callers that connect together, and stops cleanly. The app is the bench's floor
    endpoint: no database to set up."""
    port = free_port()
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bench.floor.asgi:application"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
                *("--loop", uvicorn_loop.UVICORN_LOOP_ARG, "--no-access-log"),
            ],
            cwd=ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.floor.settings"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_for_server(process, url, log_path, workers, "Application startup complete")
        clients = connect(port, 20)
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )
        for client in clients:
            client.sendall(request)
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200"), log_path.read_text()
            client.close()
    finally:
        process.terminate()
        returncode = process.wait(timeout=30)
    # One worker re-raises the SIGTERM it handled (exit -15) once shut down; a supervisor exits 0.
    assert returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Finished server process" in log_path.read_text()
