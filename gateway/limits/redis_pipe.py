"""One pipelined connection to Redis for the two scripts every call runs (admit, then settle).

Why not redis-py for these two: its asyncio client spends 180-250 us of CPU on each command on
the bench machine (a connection taken from the pool and a probe of its socket, the command
packed in Python, a timeout context around each read), and a call runs two. Here a command is
one ``write`` of bytes hiredis packed, and a future that hiredis's parser resolves: every
command of the process shares one connection, written as they come, answered in order. redis-py
still does everything else (budgets loaded from the ledger, epochs, reservations moved after an
outage), where a round trip is rare.

TCP, TLS (``rediss://``) and Unix sockets, as redis-py reads the URL: host, port, db, user,
password, and for TLS the ``ssl_*`` options of ``_TLS_OPTIONS``, from which redis-py's own
``SSLConnection`` makes the ``ssl.SSLContext``, so its defaults hold (the certificate verified
against the system's CAs or ``ssl_ca_certs``, the host name checked). A URL with anything more
(socket options, ``ssl_min_version``) gets no pipe (``Pipe.for_url`` is None), and its counters
go through redis-py. Failures raise redis-py's exceptions: ``ConnectionError`` (the connection
failed, its TLS handshake too, or was lost, every command waiting on it with it),
``TimeoutError`` (no answer within ``timeout``: the connection is dropped, as replies would no
longer match their commands) and ``ResponseError``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

NAME = "tollgate-counters"
"""The connection's name in Redis's ``CLIENT LIST``."""
_TCP_OPTIONS = frozenset({"host", "port", "db", "username", "password"})
_TLS_OPTIONS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_check_hostname",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_ciphers",
    }
)
"""All of ``SSLConnection``'s arguments but ``ssl_min_version``, which a URL gives as a string that
redis-py cannot use (it then fails every connection)."""
_KNOWN_OPTIONS: dict[type | None, frozenset[str]] = {
    None: _TCP_OPTIONS,
    SSLConnection: _TCP_OPTIONS | _TLS_OPTIONS,
    UnixDomainSocketConnection: frozenset({"path", "db", "username", "password"}),
}
"""The URL's options the pipe uses, by ``parse_url``'s ``connection_class`` (None: TCP)."""


class _Connection(asyncio.Protocol):
    """Commands written in order; each reply resolves the oldest waiting future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Any], asyncio.TimerHandle | None]] = deque()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open = True

    def send(self, packed: bytes, timeout: float | None) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        if self.transport is None:  # lost since the caller took it (Redis closed it at once)
            future.set_exception(RedisConnectionError("Connection to Redis lost"))
            return future
        timer = self.loop.call_later(timeout, self._expire, future) if timeout else None
        self.waiting.append((future, timer))
        self.transport.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future, timer = self.waiting.popleft()
                if timer is not None:
                    timer.cancel()
                if not future.done():  # else its caller was cancelled: the reply is dropped
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked
            self.abort(RedisConnectionError(f"Redis's reply could not be read: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(RedisConnectionError(f"Connection to Redis lost: {exc or 'closed by Redis'}"))

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self.abort(RedisTimeoutError("Timeout reading from Redis"))

    def abort(self, error: Exception) -> None:
        """Fail every command waiting, and close: later ones take a new connection."""
        self.open = False
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
        while self.waiting:
            future, timer = self.waiting.popleft()
            if timer is not None:
                timer.cancel()
            if not future.done():
                future.set_exception(error)


class Pipe:
    def __init__(
        self, options: dict[str, Any], timeout: float | None, tls: dict[str, Any] | None = None
    ) -> None:
        self.options = options
        self.timeout = timeout
        self.tls = tls  # SSLConnection's arguments (``ssl_*``), for a TLS connection
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    @classmethod
    def for_url(cls, url: str, timeout: float | None) -> Pipe | None:
        options: dict[str, Any] = dict(parse_url(url))
        kind = options.pop("connection_class", None)
        if not set(options) <= _KNOWN_OPTIONS.get(kind, frozenset()):
            return None  # an option this pipe does not know: redis-py does it all
        if kind is UnixDomainSocketConnection and "path" not in options:
            return None  # no socket named: redis-py fails as it does
        tls = {name: options.pop(name) for name in _TLS_OPTIONS & set(options)}
        return cls(options, timeout, tls if kind is SSLConnection else None)

    async def script(self, sha: str, source: str, keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA``; the script is loaded first if Redis does not have it (a restart)."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        reply = await self.command(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            _checked(await self.command(("SCRIPT", "LOAD", source)))
            reply = await self.command(command)
        return _checked(reply)

    async def command(self, args: tuple[Any, ...]) -> Any:
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect()
        elif connection.loop is not asyncio.get_running_loop():  # a new loop (tests)
            self._connection = None  # left to its own loop, which may be closed: not touched
            connection = await self._connect()
        return await connection.send(_pack(args), self.timeout)

    async def _connect(self) -> _Connection:
        """One connection attempt at a time, shared by the commands that wait for it."""
        loop = asyncio.get_running_loop()
        pending = self._connecting
        if pending is None or pending.done() or pending.get_loop() is not loop:
            self._connecting = pending = loop.create_task(self._open())
        return await asyncio.shield(pending)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop)
        options = self.options
        try:
            async with asyncio.timeout(self.timeout):
                if "path" in options:
                    await loop.create_unix_connection(lambda: connection, options["path"])
                else:
                    host, port = options.get("host", "localhost"), options.get("port", 6379)
                    if self.tls is None:
                        await loop.create_connection(lambda: connection, host, port)
                    else:  # made at each connection, so that renewed certificates are read
                        context = SSLConnection(**self.tls).ssl_context.get()
                        await loop.create_connection(
                            lambda: connection, host, port, ssl=context, server_hostname=host
                        )
                if options.get("password") is not None:
                    user = [options["username"]] if options.get("username") else []
                    reply = await connection.send(_pack(("AUTH", *user, options["password"])), None)
                    if isinstance(reply, hiredis.ReplyError):
                        raise AuthenticationError(str(reply))
                if options.get("db"):
                    _checked(await connection.send(_pack(("SELECT", options["db"])), None))
                _checked(await connection.send(_pack(("CLIENT", "SETNAME", NAME)), None))
        except TimeoutError as exc:
            connection.abort(RedisTimeoutError("Timeout connecting to Redis"))
            raise RedisTimeoutError("Timeout connecting to Redis") from exc
        except OSError as exc:
            connection.abort(RedisConnectionError(str(exc)))
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        except BaseException:
            connection.abort(RedisConnectionError("Redis's connection was not set up"))
            raise
        self._connection = connection
        return connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.loop.is_closed():
            connection.abort(RedisConnectionError("Redis's connection was closed"))


def _pack(args: tuple[Any, ...]) -> bytes:
    return hiredis.pack_command(args)


def _checked(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    return reply
