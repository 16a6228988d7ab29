"""Serving ``GET /metrics``: on the API's port behind a bearer token (TOLLGATE_METRICS_TOKEN), and
on a bind address of its own without one (TOLLGATE_METRICS_ADDR).

Both are plain ASGI or asyncio, outside Django: a scrape neither pays for Django's middleware nor
depends on it, the separate address has no Django at all, and either answers the same bytes
(``Metrics.scrape``: every worker's values, whichever worker answers).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from django.core.exceptions import ImproperlyConfigured
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from providers.errors import AuthenticationFailed, GatewayError

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("tollgate.metrics")

PATH = "/metrics"
READ_SECONDS = 10.0
"""How long the separate listener waits for a request's head."""


async def answer(scope: dict[str, Any], send: Any, token: str, runtime: Runtime) -> None:
    """``GET /metrics`` on the API's port, for ``Authorization: Bearer <token>`` only (compared
    in constant time; 401 otherwise), in the API's error shape."""
    if scope["method"] != "GET":
        error = GatewayError(
            f"{scope['method']} is not allowed on {PATH}.",
            status=405,
            type="invalid_request_error",
            code="method_not_allowed",
        )
        await _send_error(send, error, [(b"allow", b"GET")])
    elif not _bearer_is(scope, token.encode()):
        error = AuthenticationFailed(
            "The metrics need the bearer token of TOLLGATE_METRICS_TOKEN in the Authorization "
            "header."
        )
        await _send_error(send, error, [(b"www-authenticate", b'Bearer realm="metrics"')])
    elif runtime.metrics is None:
        off = GatewayError("The metrics are off.", status=404, type="invalid_request_error")
        await _send_error(send, off, [])
    else:
        await _send(send, 200, runtime.metrics.scrape(runtime), CONTENT_TYPE_LATEST.encode())


def _bearer_is(scope: dict[str, Any], token: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
    return False


async def _send_error(send: Any, error: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    await _send(send, error.status, orjson.dumps(error.to_openai()), b"application/json", headers)


async def _send(
    send: Any,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    start = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": start + (headers or [])}
    )
    await send({"type": "http.response.body", "body": body})


class Listener:
    """``/metrics`` on ``address``, without a token (bind it to a private interface), served by
    the one worker that binds it first: the others find it taken and leave it be. A worker
    that uvicorn restarts binds it again when its predecessor held it."""

    def __init__(self, address: tuple[str, int], scrape: Callable[[], bytes]) -> None:
        self.address = address
        self.scrape = scrape
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen, unless the address is taken (by another worker: quietly); any other failure
        (an address of no interface here, a port not allowed) stops the server, naming it."""
        host, port = self.address
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.create_server((host, port), family=family)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise ImproperlyConfigured(
                    f"TOLLGATE_METRICS_ADDR {host}:{port} cannot be listened on: {error}"
                ) from error
            log.debug("metrics on %s:%d are served by another worker", host, port)
            return
        self.server = await asyncio.start_server(self._answer, sock=sock)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection: the request line is all that matters."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_SECONDS)
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if target.partition(b"?")[0] != PATH.encode():
                status, body = b"404 Not Found", b"Not found: the metrics are at /metrics.\n"
                content_type = b"text/plain; charset=utf-8"
            elif method != b"GET":
                status, body = b"405 Method Not Allowed", b"GET only.\n"
                content_type = b"text/plain; charset=utf-8"
            else:
                status, body = b"200 OK", self.scrape()
                content_type = CONTENT_TYPE_LATEST.encode()
            writer.write(
                b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, content_type, len(body))
            )
            writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass  # not a request: hang up
        except ConnectionError:
            pass  # the scraper went away
        finally:
            writer.close()
