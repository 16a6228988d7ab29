"""uvicorn's event loop: uvloop, with a listening socket that accepts every waiting connection.

``uvicorn ... --loop tollgate.uvicorn_loop:new_event_loop``: what ``make serve``, the systemd unit
and the bench run. uvloop's own server (0.23) accepts one connection per turn of the loop (strace:
one ``accept4`` per ``epoll_pwait``).
A saturated worker's turn lasts as long as the work of every call it holds, tens of milliseconds:
two hundred callers that connect at once then wait up to 200 turns, seconds, in the kernel's
accept queue before the application sees them, while callers on open connections are served at
once (issue #17: p99 at c200 was 16x the median, the floor endpoint's alike). Here a turn accepts
every connection waiting, as asyncio's own loop does: a new caller waits one turn, as any other.

TCP and Unix sockets (``--uds``, and a socket uvicorn's supervisor binds for ``--workers N``) are
served so, plain or TLS served by uvicorn itself (``--ssl-*``): a TLS connection is accepted as
any other, and its handshake then runs in uvloop's SSL protocol, on its own, while the loop goes on
accepting and serving. Only options uvloop alone knows keep uvloop's server.

A socket handed over (``sock=``: uvicorn's supervisor binds one for all its workers) may be shared
with other processes, all woken when it is readable: a worker taking every waiting connection
would take a burst whole (50 callers connecting at once all landed on one of two workers in 3 runs
of 12, the other idle for their lifetime). From such a socket a turn takes half of what waits
(the kernel's count, TCP's ``TCP_INFO``), at least one; the other workers take the rest, and a
queue still drains in a few turns. A Unix socket tells no count: ``SHARED_BATCH`` a turn. A socket
the loop bound itself (``host``/``port``, ``path``) is its own: every waiting connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterable
from functools import partial
from ssl import SSLContext
from typing import Any

import uvloop

log = logging.getLogger("tollgate")

ACCEPT_RETRY_SECONDS = 1.0
"""After running out of file descriptors or memory, the pause before accepting again (the loop
would otherwise spin on a socket that stays readable), as asyncio's ``ACCEPT_RETRY_DELAY``."""
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
SHARED_BATCH = 8
"""Connections a turn takes from a socket maybe shared with other workers whose queue length is
not known (a Unix socket)."""
_TCP_INFO_QUEUED = 24
"""Offset of ``tcpi_unacked`` in Linux's ``struct tcp_info``: for a listening socket, the
connections waiting in its accept queue."""


class AcceptingServer(asyncio.AbstractServer):
    """Listening sockets served by ``loop.add_reader``: each time one is readable, every waiting
    connection (up to ``backlog``) is accepted and handed to ``loop.connect_accepted_socket``;
    from ``shared`` sockets, a fair share of them (the module's docstring).

    With ``ssl``, each connection accepted is handed over with it and its timeouts (None:
    uvloop's, 60 s and 30 s), and its TLS handshake runs in a task of ``_handshakes`` (a plain
    connection's lasts a turn). A handshake that fails (a plain-http caller, a caller silent
    until the handshake timeout, one that hangs up) closes its connection and ends its task;
    the application never sees it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: Iterable[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        shared: bool = False,
        ssl: SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._shared = shared
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._closed = loop.create_future()
        self._handshakes: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving or self._closed.done():
            return
        self._serving = True
        for sock in self._sockets:
            sock.setblocking(False)
            sock.listen(self._backlog)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self.wait_closed()

    def close(self) -> None:
        """Stop accepting, close the listening sockets and cancel the handshakes under way: a
        connection not yet handed to the application is dropped, as one still waiting in the
        accept queue is. Open connections are the application's (uvicorn shuts them down)."""
        if self._closed.done():
            return
        self._serving = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for handshake in self._handshakes:
            handshake.cancel()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Until ``close``, and the end of the handshakes it cancelled: their sockets closed."""
        await asyncio.shield(self._closed)
        if self._handshakes:
            await asyncio.wait(self._handshakes)

    async def __aenter__(self) -> AcceptingServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._share(sock) if self._shared else self._backlog):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # nothing more waits
            except ConnectionAbortedError:
                continue  # the caller gave up before we got to it
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise  # the loop logs it; the reader stays
                log.error(
                    "accepting a connection failed (%s); retrying in %s s",
                    exc,
                    ACCEPT_RETRY_SECONDS,
                )
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume, sock)
                return
            handshake = self._loop.create_task(self._connect(conn))
            self._handshakes.add(handshake)
            handshake.add_done_callback(partial(self._connected, conn))

    def _share(self, sock: socket.socket) -> int:
        """This turn's take from a shared socket: half of the connections waiting, at least
        one; ``SHARED_BATCH`` when the socket does not tell."""
        waiting = queued(sock)
        if waiting is None:
            return min(SHARED_BATCH, self._backlog)
        return max(1, (waiting + 1) // 2)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(
                self._protocol_factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._ssl_handshake_timeout,
                ssl_shutdown_timeout=self._ssl_shutdown_timeout,
            )
        except OSError:  # the caller hung up meanwhile, or failed the TLS handshake (SSLError)
            conn.close()

    def _connected(self, conn: socket.socket, handshake: asyncio.Task[Any]) -> None:
        """A handshake's end. Cancelled by ``close`` before it began, its socket is closed
        here, or nothing would close it. Cancelled mid-handshake, the socket is its transport's,
        which uvloop closes: closing it here only marks it closed (uvloop holds an io reference
        to it) or finds it already detached, so nothing is closed twice."""
        self._handshakes.discard(handshake)
        if handshake.cancelled():
            conn.close()

    def _resume(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)


class Loop(uvloop.Loop):
    """uvloop, whose TCP and Unix socket servers, plain or TLS (an ``ssl.SSLContext``), are
    ``AcceptingServer``s (uvloop's own for options it alone knows)."""

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_port: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        plain = (sock is None and port is not None) or (
            sock is not None and sock.type == socket.SOCK_STREAM
        )
        tls = (ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if kwargs or not plain or not _served_here(*tls):
            uvloops: Any = super()
            return await uvloops.create_server(
                protocol_factory,
                host,
                port,
                family=family,
                flags=flags,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                reuse_port=reuse_port,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
                **kwargs,
            )
        shared = sock is not None
        if sock is not None:
            sockets = [sock]
        else:
            sockets = await self._listening_sockets(host, port, family, flags, reuse_port)
        return await self._serve(sockets, protocol_factory, backlog, shared, start_serving, *tls)

    async def create_unix_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: str | os.PathLike[str] | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        """A Unix socket server: bound to ``path`` (a stale socket file there is replaced, as
        asyncio and uvloop do; any other file there is an error), or on ``sock``."""
        tls = (ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if kwargs or (path is None) == (sock is None) or not _served_here(*tls):
            uvloops: Any = super()
            return await uvloops.create_unix_server(
                protocol_factory,
                path,
                sock=sock,
                backlog=backlog,
                ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                start_serving=start_serving,
                **kwargs,
            )
        if sock is None:
            assert path is not None
            sock = _bind_unix(os.fspath(path))
        elif sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX domain stream socket was expected, got {sock!r}")
        return await self._serve(
            [sock], protocol_factory, backlog, path is None, start_serving, *tls
        )

    async def _serve(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        shared: bool,
        start_serving: bool,
        ssl: SSLContext | None,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None,
    ) -> AcceptingServer:
        """The server of ``sockets``; ``shared``: handed over, not bound here, so maybe shared
        with other workers (the module's docstring)."""
        server = AcceptingServer(
            self,
            sockets,
            protocol_factory,
            backlog,
            shared=shared,
            ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if start_serving:
            await server.start_serving()
        return server

    async def _listening_sockets(
        self,
        host: str | None,
        port: int | None,
        family: int,
        flags: int,
        reuse_port: bool | None,
    ) -> list[socket.socket]:
        """One bound socket per address ``host`` resolves to (every interface for ``None``), as
        asyncio binds them: SO_REUSEADDR, IPv6 sockets IPv6-only."""
        infos = await self.getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, flags=flags
        )
        sockets: list[socket.socket] = []
        try:
            for address_family, address in dict.fromkeys((info[0], info[4]) for info in infos):
                sockets.append(
                    socket.create_server(
                        address, family=address_family, reuse_port=bool(reuse_port)
                    )
                )
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return sockets


def _served_here(
    ssl: object, ssl_handshake_timeout: float | None, ssl_shutdown_timeout: float | None
) -> bool:
    """Whether an ``AcceptingServer`` serves these: no TLS, or an ``SSLContext`` with its
    timeouts. A timeout that is not positive is refused here, before a socket is bound (uvloop
    would refuse it at every connection accepted). The rest (a timeout without ``ssl``, an
    ``ssl`` that is no context) is left to uvloop's server, which refuses it."""
    if ssl is None:
        return ssl_handshake_timeout is None and ssl_shutdown_timeout is None
    for name, timeout in (
        ("ssl_handshake_timeout", ssl_handshake_timeout),
        ("ssl_shutdown_timeout", ssl_shutdown_timeout),
    ):
        if timeout is not None and timeout <= 0:
            raise ValueError(f"{name} should be a positive number, got {timeout}")
    return isinstance(ssl, SSLContext)


def queued(sock: socket.socket) -> int | None:
    """How many connections wait in a listening TCP socket's accept queue; None for a socket
    that does not tell (a Unix socket, a system without ``TCP_INFO``)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_QUEUED + 4)
    except OSError:
        return None
    if len(info) < _TCP_INFO_QUEUED + 4:
        return None
    return int(struct.unpack_from("I", info, _TCP_INFO_QUEUED)[0])


def _bind_unix(path: str) -> socket.socket:
    if not path.startswith("\0"):  # a file, not Linux's abstract namespace
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.remove(path)  # left by a server that is gone
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
        raise
    return sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory ``uvicorn --loop tollgate.uvicorn_loop:new_event_loop`` calls."""
    return Loop()


UVICORN_LOOP_ARG = f"{__name__}:{new_event_loop.__name__}"
"""What to give uvicorn's ``--loop`` (the bench and the tests do; the Makefile and the unit spell
it out)."""
