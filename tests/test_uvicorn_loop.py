"""uvicorn's event loop (``tollgate/uvicorn_loop.py``): a turn accepts every waiting connection.

The loop's servers run here on 127.0.0.1 with real sockets; the callers connect with blocking
sockets, whose handshake the kernel completes before the server accepts (as wrk's 200 connections
wait in the accept queue of a busy worker). TLS callers then run their TLS handshake on the loop,
against a throwaway CA's certificate for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from support.private_services import TlsFiles, make_tls_files

from bench.processes import free_port
from tollgate import uvicorn_loop

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
"""A call to the bench's floor endpoint, which answers 200 with no database."""


class Echo(asyncio.Protocol):
    """Counts the connections accepted (a TLS connection's protocol is made then, before its
    handshake) and made; answers every chunk with its own bytes."""

    accepted = 0
    made = 0

    def __init__(self) -> None:
        type(self).accepted += 1

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


def connect_unix(path: str, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect(path)
        clients.append(client)
    return clients


def connect_to(server: Any, count: int) -> list[socket.socket]:
    address = server.sockets[0].getsockname()
    if isinstance(address, str):
        return connect_unix(address, count)
    return connect(address[1], count)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """What uvicorn makes of ``--ssl-certfile`` and ``--ssl-keyfile``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A caller that verifies the server's certificate against the CA, and its address."""
    return ssl.create_default_context(cafile=files.ca)


async def tls_echo(client: socket.socket, context: ssl.SSLContext, data: bytes) -> bytes:
    """Run a TLS handshake on ``client``, a connected socket, then send ``data``: the echo."""
    client.setblocking(False)
    reader, writer = await asyncio.open_connection(
        sock=client, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(data)
    echoed = await reader.readexactly(len(data))
    writer.close()
    return echoed


async def accepted_after_turns(server: Any, callers: int, turns: int) -> int:
    """Connect ``callers`` at once while the loop is not running, then let it make ``turns``
    turns: how many connections did the server's protocol see made?"""
    Echo.made = 0
    clients = connect_to(server, callers)  # the loop is here, not polling: all wait to be accepted
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


@pytest.mark.parametrize(
    ("loop_factory", "at_least", "at_most"),
    [(uvicorn_loop.new_event_loop, 100, 100), (uvloop.new_event_loop, 0, 20)],
    ids=["tollgate loop: all at once", "stock uvloop: one a turn"],
)
def test_a_turn_of_the_loop_accepts_every_tls_connection_waiting(
    tls_files: TlsFiles,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    at_least: int,
    at_most: int,
) -> None:
    """uvicorn serving TLS itself (``--ssl-*``) gives ``ssl``: a turn accepts every connection
    waiting all the same (uvloop's own server, which the loop kept for TLS before, one a turn),
    and each then completes its handshake and is served."""

    async def main() -> tuple[int, list[bytes]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            Echo, "127.0.0.1", 0, backlog=512, ssl=server_context(tls_files)
        )
        Echo.accepted = 0
        clients = connect_to(server, 100)
        try:
            for _ in range(10):
                await asyncio.sleep(0)
            accepted = Echo.accepted
            context = client_context(tls_files)
            echoed = await asyncio.gather(*(tls_echo(c, context, b"ping") for c in clients))
            return accepted, echoed
        finally:
            for client in clients:
                client.close()
            server.close()
            await server.wait_closed()

    accepted, echoed = run(loop_factory, main())
    assert at_least <= accepted <= at_most
    assert echoed == [b"ping"] * 100


def test_tls_callers_that_fail_the_handshake_are_dropped_while_others_are_served(
    tls_files: TlsFiles,
) -> None:
    """A caller speaking plain http to the TLS port, one that sends its hello and hangs up, and
    one silent until the handshake timeout are each dropped, their tasks ended, while a TLS
    caller connecting meanwhile is served at once; the server serves on, and nothing is left
    for the loop's exception handler."""
    timeout = 0.5

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        server: Any = await loop.create_server(
            Echo, "127.0.0.1", 0, ssl=server_context(tls_files), ssl_handshake_timeout=timeout
        )
        port = server.sockets[0].getsockname()[1]
        started = loop.time()
        silent, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        plain, plain_writer = await asyncio.open_connection("127.0.0.1", port)
        plain_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        _hung_up, hung_up_writer = await asyncio.open_connection("127.0.0.1", port)
        hung_up_writer.write(client_hello(client_context(tls_files)))
        hung_up_writer.close()
        plain_answer = await asyncio.wait_for(plain.read(), 2)
        served = await tls_echo(connect(port, 1)[0], client_context(tls_files), b"ping")
        served_after = loop.time() - started
        still_in_handshake = len(server._handshakes)  # the silent caller's
        silent_answer = await asyncio.wait_for(silent.read(), 2)
        dropped_after = loop.time() - started
        await asyncio.sleep(0.05)
        left = len(server._handshakes)
        served_on = await tls_echo(connect(port, 1)[0], client_context(tls_files), b"pong")
        silent_writer.close()
        plain_writer.close()
        server.close()
        await server.wait_closed()
        return {
            "plain": plain_answer,
            "served": served,
            "in handshake": still_in_handshake,
            "silent": silent_answer,
            "left": left,
            "served on": served_on,
            "reported": reported,
            "served early": served_after < timeout,
            "dropped at the timeout": timeout <= dropped_after < 2,
        }

    assert run(uvicorn_loop.new_event_loop, main()) == {
        "plain": b"",
        "served": b"ping",
        "in handshake": 1,
        "silent": b"",
        "left": 0,
        "served on": b"pong",
        "reported": [],
        "served early": True,
        "dropped at the timeout": True,
    }


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a TLS handshake, as a caller sends it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


def test_closing_a_tls_server_drops_the_handshakes_under_way(tls_files: TlsFiles) -> None:
    """``close`` cancels the handshakes under way (uvicorn never sees those connections, so
    could not shut them down), one begun and one accepted in the same turn as the close, not
    yet begun; ``wait_closed`` returns once they have ended, their sockets closed."""

    async def main() -> tuple[int, list[bytes]]:
        loop = asyncio.get_running_loop()
        server: Any = await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_context(tls_files))
        begun = connect_to(server, 1)[0]
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(server._handshakes) == 1
        not_begun = connect_to(server, 1)[0]
        server._accept(server.sockets[0])  # its task made, not yet run: the loop is here
        server.close()
        async with asyncio.timeout(1):  # not wait_for: its task would give the handshakes turns
            await server.wait_closed()
        left = len(server._handshakes)
        answers = []
        for client in (begun, not_begun):
            client.settimeout(1)  # blocking the loop: the server must have closed it already
            answers.append(client.recv(64))
            client.close()
        return left, answers

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        outcome = run(uvicorn_loop.new_event_loop, main())
    assert outcome == (0, [b"", b""])  # closed at once, the handshake timeout being 60 s
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


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


def test_a_unix_socket_path_accepts_every_connection_waiting_and_serves_them(
    tmp_path: Path,
) -> None:
    """``uvicorn --uds PATH`` with one worker: the loop binds the path, the socket is its own."""
    path = str(tmp_path / "tollgate.sock")

    async def main() -> tuple[int, bytes]:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path, backlog=512)
        assert isinstance(server, uvicorn_loop.AcceptingServer)
        try:
            made = await accepted_after_turns(server, 100, turns=10)
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"ping")
            echoed = await reader.readexactly(4)
            writer.close()
            return made, echoed
        finally:
            server.close()
            await server.wait_closed()

    assert run(uvicorn_loop.new_event_loop, main()) == (100, b"ping")


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_socket_handed_over_is_shared_so_a_turn_takes_a_share_of_it(
    tmp_path: Path, family: str
) -> None:
    """uvicorn's supervisor hands every worker the socket it bound (``sock=``). A turn takes half
    of what waits (TCP tells how many), or ``SHARED_BATCH`` (a Unix socket does not): more
    than one a turn, fewer than all, and the queue drains in a few turns."""
    if family == "tcp":
        sock = socket.create_server(("127.0.0.1", 0), backlog=512)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / "shared.sock"))

    async def main() -> list[int]:
        server = await asyncio.get_running_loop().create_server(Echo, sock=sock, backlog=512)
        assert isinstance(server, uvicorn_loop.AcceptingServer)
        try:
            Echo.made = 0
            clients = connect_to(server, 100)
            made = []  # after each turn
            for _ in range(30):
                await asyncio.sleep(0)
                made.append(Echo.made)
            for client in clients:
                client.close()
            return made
        finally:
            server.close()

    made = run(uvicorn_loop.new_event_loop, main())
    most_in_a_turn = max(b - a for a, b in zip([0, *made], made, strict=False))
    assert most_in_a_turn == (50 if family == "tcp" else uvicorn_loop.SHARED_BATCH)
    assert made[-1] == 100


def test_two_workers_on_one_socket_each_take_a_share_of_a_burst() -> None:
    """Two servers on one listening socket (two descriptors of it, as two workers hold it), both
    readable each turn: 50 callers connecting at once are split, not taken whole by the first
    (which took every waiting connection before: a whole burst on one of two workers in 3 runs
    of 12, the other idle)."""
    listening = socket.create_server(("127.0.0.1", 0), backlog=512)
    port = listening.getsockname()[1]

    by_server = [0, 0]

    def counting(index: int) -> Callable[[], asyncio.Protocol]:
        def protocol() -> asyncio.Protocol:
            by_server[index] += 1
            return Echo()

        return protocol

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(counting(i), sock=listening.dup(), backlog=512)
            for i in range(2)
        ]
        clients = connect(port, 50)
        for _ in range(20):
            await asyncio.sleep(0)
        for client in clients:
            client.close()
        for server in servers:
            server.close()
        return by_server

    first, second = run(uvicorn_loop.new_event_loop, main())
    listening.close()
    assert first + second == 50
    assert min(first, second) >= 10, (first, second)


def test_queued_tells_how_many_connections_wait_on_a_tcp_socket(tmp_path: Path) -> None:
    listening = socket.create_server(("127.0.0.1", 0), backlog=64)
    clients = connect(listening.getsockname()[1], 7)
    assert uvicorn_loop.queued(listening) == 7
    listening.accept()[0].close()
    assert uvicorn_loop.queued(listening) == 6
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "q.sock"))
    unix.listen(8)
    assert uvicorn_loop.queued(unix) is None
    for each in (*clients, listening, unix):
        each.close()


def test_stock_uvloop_accepts_a_unix_socket_connection_a_turn(tmp_path: Path) -> None:
    """What the loop mends on a Unix socket too (and that the test above can tell)."""
    path = str(tmp_path / "stock.sock")

    async def main() -> int:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path, backlog=512)
        try:
            return await accepted_after_turns(server, 100, turns=10)
        finally:
            server.close()

    assert run(uvloop.new_event_loop, main()) <= 20


def test_a_unix_socket_path_replaces_a_stale_socket_never_another_file(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gone.bind(str(stale))
    gone.close()  # the file stays, as a server killed leaves it
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(Echo, str(stale))
        server.close()
        with pytest.raises(OSError, match="already in use"):
            await loop.create_unix_server(Echo, str(other))

    run(uvicorn_loop.new_event_loop, main())
    assert other.read_text() == "keep me"


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


@contextmanager
def uvicorn_on_the_loop(tmp_path: Path, workers: int, *options: str) -> Iterator[Path]:
    """uvicorn with ``options`` and ``--loop tollgate.uvicorn_loop:new_event_loop``, as ``make
    serve`` gives it, serving the bench's floor endpoint (no database to set up) once every
    worker has started; it must stop cleanly when terminated. Yields its log's path."""
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bench.floor.asgi:application", *options),
                *("--workers", str(workers), "--loop", uvicorn_loop.UVICORN_LOOP_ARG),
                "--no-access-log",
            ],
            cwd=ROOT,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.floor.settings"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while log_path.read_text().count("Application startup complete") < workers:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield log_path
    finally:
        process.terminate()
        returncode = process.wait(timeout=30)
    # One worker re-raises the SIGTERM it handled (exit -15) once shut down; a supervisor exits 0.
    assert returncode in (0, -signal.SIGTERM), log_path.read_text()
    assert "Finished server process" in log_path.read_text()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("listen", ["tcp", "unix"])
def test_uvicorn_serves_on_the_loop(tmp_path: Path, listen: str, workers: int) -> None:
    """uvicorn binds its address, TCP or a Unix socket (``--uds``, as a reverse proxy on the
    same host talks to it), itself (one worker) or hands its workers the socket its supervisor
    bound (two), serves callers that connect together, and stops cleanly."""
    port, path = free_port(), tmp_path / "tollgate.sock"
    where = (
        ("--host", "127.0.0.1", "--port", str(port)) if listen == "tcp" else ("--uds", str(path))
    )
    with uvicorn_on_the_loop(tmp_path, workers, *where) as log_path:
        clients = connect(port, 20) if listen == "tcp" else connect_unix(str(path), 20)
        for client in clients:
            client.sendall(REQUEST)
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200"), log_path.read_text()
            client.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_serves_tls_on_the_loop(tmp_path: Path, tls_files: TlsFiles, workers: int) -> None:
    """uvicorn serving TLS itself (``--ssl-keyfile``, ``--ssl-certfile``), on the address it
    binds (one worker) or the socket its supervisor hands its workers (two): callers that
    connect together each verify its certificate against the CA and get their answer."""
    port = free_port()
    tls = ("--ssl-keyfile", str(tls_files.server_key), "--ssl-certfile", str(tls_files.server_cert))
    where = ("--host", "127.0.0.1", "--port", str(port))
    with uvicorn_on_the_loop(tmp_path, workers, *where, *tls) as log_path:
        context = client_context(tls_files)
        clients = [
            context.wrap_socket(client, server_hostname="127.0.0.1") for client in connect(port, 20)
        ]
        for client in clients:
            client.sendall(REQUEST)
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200"), log_path.read_text()
            client.close()
