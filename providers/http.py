"""HTTP plumbing shared by every provider: one send, and failures classified into the error tree.

Classification is by transport exception and by status code, never by the upstream's text.
"""

from __future__ import annotations

import contextlib
import email.utils
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

from providers import json_text
from providers.errors import (
    ProviderError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from providers.types import Usage

_ERROR_BODY_LIMIT = 64 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods httpx gives a ``Content-Length: 0`` when they send no body."""
READ_WHOLE = "tollgate.read_whole"
"""A request extension: the answer is wanted whole (a JSON answer, not a stream), and
``UpstreamTransport`` reads it before it returns the response. Other transports ignore it (the
caller's ``aread`` then reads it)."""


def _aiohttp_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    """``headers.items()`` as aiohttp takes them, merged the same way (values of a repeated name
    joined), but decoded in one pass: httpx's ``items`` works out the encoding again for every
    header, a tenth of the transport's time."""
    encoding = headers.encoding
    merged: dict[str, str] = {}
    for name, value in headers.raw:
        key = name.lower().decode(encoding)
        text = value.decode(encoding)
        merged[key] = f"{merged[key]}, {text}" if key in merged else text
    return list(merged.items())


def _answer_extensions(reason: str | None) -> dict[str, Any]:
    extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
    if reason:
        extensions["reason_phrase"] = reason.encode()
    return extensions


class UpstreamTransport(AiohttpTransport):
    """httpx over aiohttp, as ``AiohttpTransport``, with two differences.

    - Its session keeps no cookies: it serves every tenant's calls, and aiohttp's own jar would
      send a cookie one answer set (a CDN's ``__cf_bm``, say) with every later call to that
      host, whichever tenant's. Nor is a jar searched on every call.
    - A request marked ``READ_WHOLE`` gets its answer read by aiohttp in one go, the response
      holding the bytes: httpx's ``aread`` of an aiohttp stream (its byte iterators, chunker
      and decoder set-up, a chunk at a time) was a sixth of a JSON call's upstream time. A
      compressed answer is still decoded by httpx, as before.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=self.limits.max_connections or 0,  # 0: no limit, as httpx's None
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None or self.uds is not None:
            return await super().handle_async_request(request)  # never so for a provider
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        try:
            content = request.content
        except httpx.RequestNotRead:  # a streamed body: aiohttp reads it from httpx's stream
            return await super().handle_async_request(request)
        extensions = request.extensions
        try:
            answer = await self.client.request(
                request.method,
                str(request.url),
                headers=_aiohttp_headers(request.headers),
                data=content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=self._timeout(extensions.get("timeout") or {}),
                server_hostname=extensions.get("sni_hostname"),
            ).__aenter__()
            if not extensions.get(READ_WHOLE):
                return self._response(request, answer, AiohttpResponseStream(answer))
            try:
                body = await answer.read()
            finally:
                answer.release()  # the connection back to the pool, or closed on a failure
        except Exception:  # mapped as the stock transport maps it: entered on a failure only
            with map_aiohttp_exceptions():
                raise
        response = self._response(request, answer, httpx.ByteStream(body))
        if answer.headers.get("content-encoding", "identity") == "identity":
            response._content = body  # as ``read`` would set it, without its chunk pipeline
        else:
            response.read()  # decoded as httpx decodes
        return response

    @staticmethod
    def _response(
        request: httpx.Request, answer: aiohttp.ClientResponse, stream: httpx.AsyncByteStream
    ) -> httpx.Response:
        return httpx.Response(
            answer.status,
            headers=answer.raw_headers,
            stream=stream,
            request=request,
            extensions=_answer_extensions(answer.reason),
        )

    def _timeout(self, timeout: dict[str, float | None]) -> aiohttp.ClientTimeout:
        """``AiohttpTransport``'s mapping of httpx's timeouts, built once per set of values."""
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            found = self._timeouts[key] = aiohttp.ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return found


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class UpstreamClient(httpx.AsyncClient):
    """A provider's HTTP client, shared by every tenant's calls: it keeps no cookies. What an
    upstream (or the CDN in front of it) sets for one call is never sent with another tenant's,
    and the cookie jar's work on every answer (a fifth of the client's time) is not done.

    An upstream call needs none of ``AsyncClient``'s layers between a request and its transport
    (base URL and params to merge, auth flows, redirects, event hooks, cookies): ``upstream``
    builds the request and ``send_upstream`` sends it straight to the transport, a tenth of the
    event loop's time per call (bench/README.md)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._extensions: dict[str, Any] = {"timeout": self.timeout.as_dict()}
        self._whole = {**self._extensions, READ_WHOLE: True}
        self._defaults = [(name.lower(), name, value) for name, value in self.headers.raw]

    def upstream(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None = None,
        whole: bool = False,
    ) -> httpx.Request:
        """``build_request(method, url, headers=headers, content=content)``, for an absolute
        ``url``: the client's default headers, ``headers`` over them (whatever their case), its
        timeouts, and the ``Host`` and ``Content-Length`` httpx would add; the same request, but
        its headers are put together once as bytes instead of merged a header at a time.
        ``whole``: the answer is to be read whole (``READ_WHOLE``), not streamed."""
        given = [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
        names = {name.lower() for name, _ in given}
        raw = [] if b"host" in names else [(b"Host", url.netloc)]
        raw += [(name, value) for lower, name, value in self._defaults if lower not in names]
        raw += given
        if b"content-length" not in names and (content is not None or method in _BODY_METHODS):
            raw.append((b"Content-Length", str(len(content or b"")).encode("ascii")))
        request = httpx.Request(
            method,
            url,
            headers=raw,
            stream=httpx.ByteStream(content or b""),
            extensions=self._whole if whole else self._extensions,
        )
        request.read()  # the body is known: ``request.content``, as for ``content=``
        return request

    async def send_upstream(self, request: httpx.Request) -> httpx.Response:
        """``send(request, stream=True)`` by the transport alone (or the proxy's the environment
        mounts for the URL); the caller reads and closes the response."""
        transport = self._transport_for_url(request.url)
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, value: object) -> None:
        pass  # the jar stays empty


_NO_COOKIES = _NoCookies()


TRANSPORT_FAILURES = (httpx.TransportError, httpx.DecodingError)
"""What ``upstream_error`` classifies: a failure of the upstream's connection or of its bytes."""


def upstream_error(provider: str, exc: httpx.TransportError | httpx.DecodingError) -> ProviderError:
    """A transport failure in the error tree.

    The aiohttp transport reports a refused or dropped connection as ``httpx.ConnectTimeout``;
    that is an unreachable upstream (502), not a timeout. A read that waits too long is a 504.
    An answer whose compression is broken is the upstream's fault too (502).
    """
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        return UpstreamTimeout(f"The upstream provider '{provider}' timed out.")
    if isinstance(exc, httpx.TransportError):
        return UpstreamUnavailable(
            f"The upstream provider '{provider}' could not be reached or closed the connection."
        )
    return UpstreamUnavailable(
        f"The upstream provider '{provider}' sent an answer that could not be decoded."
    )


@contextlib.contextmanager
def upstream_errors(provider: str) -> Iterator[None]:
    """Turn transport failures into the error tree (``upstream_error``). The JSON path, a
    call's every step, says ``except TRANSPORT_FAILURES`` itself: a context manager is a
    generator made, entered and left, on every call."""
    try:
        yield
    except TRANSPORT_FAILURES as exc:
        raise upstream_error(provider, exc) from exc


def upstream_error_detail(body: bytes) -> tuple[str | None, str | None, str | None]:
    """The ``message``, ``param`` and ``code`` of an OpenAI- or Anthropic-shaped error body."""
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            param, code = error.get("param"), error.get("code")
            return (
                str(error["message"]),
                param if isinstance(param, str) else None,
                code if isinstance(code, str) else None,
            )
    return None, None, None


def retry_after_of(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI's) or ``retry-after`` (seconds, or an
    HTTP date); None when neither says."""
    with contextlib.suppress(ValueError):
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return None


async def raise_for_upstream_status(provider: str, response: httpx.Response) -> None:
    """Raise the classified error for a non-2xx upstream answer.

    4xx messages are the upstream's explanation of what is wrong with the caller's request and
    are passed on; 5xx bodies and anything about the gateway's own credential are not.
    """
    if response.status_code < 400:
        return
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > _ERROR_BODY_LIMIT:
            break
    status = response.status_code
    detail, param, code = upstream_error_detail(body) if 400 <= status < 500 else (None,) * 3
    if status in (401, 403) or not detail:
        detail, param = f"The upstream provider '{provider}' answered with HTTP {status}.", None
    error = error_for_upstream_status(status, detail, param, code)
    error.retry_after = retry_after_of(response.headers)
    raise error


async def send_checked(
    client: UpstreamClient, provider: str, request: httpx.Request
) -> httpx.Response:
    """Send ``request`` and return the streamed response once its status is known to be 2xx.
    The caller closes the response."""
    try:
        response = await client.send_upstream(request)
    except TRANSPORT_FAILURES as exc:
        raise upstream_error(provider, exc) from exc
    if response.status_code >= 400:
        try:
            with upstream_errors(provider):
                await raise_for_upstream_status(provider, response)  # it raises
        finally:
            await response.aclose()
    return response


async def _post(
    client: UpstreamClient,
    provider: str,
    url: httpx.URL,
    headers: dict[str, str],
    body: dict[str, Any],
    whole: bool,
) -> httpx.Response:
    request = client.upstream("POST", url, headers, orjson.dumps(body), whole=whole)
    return await send_checked(client, provider, request)


@contextlib.asynccontextmanager
async def post_json(
    client: UpstreamClient,
    provider: str,
    url: httpx.URL,
    headers: dict[str, str],
    body: dict[str, Any],
    whole: bool = False,
) -> AsyncIterator[httpx.Response]:
    """POST ``body`` and yield the response once its status is known to be 2xx: streamed, or
    ``whole`` (read before it is yielded: ``READ_WHOLE``)."""
    response = await _post(client, provider, url, headers, body, whole)
    try:
        yield response
    finally:
        await response.aclose()


async def post_for_json(
    client: UpstreamClient,
    provider: str,
    url: httpx.URL,
    headers: dict[str, str],
    body: dict[str, Any],
    is_answer: Callable[[dict[str, Any]], bool],
    what: str,
) -> tuple[bytes, dict[str, Any]]:
    """POST ``body`` and read the whole answer (``READ_WHOLE``): its bytes and its JSON object,
    which ``is_answer`` must accept (``read_json_object``). As ``post_json``, without an
    asynchronous context manager made for each call."""
    response = await _post(client, provider, url, headers, body, whole=True)
    try:
        return await read_json_object(response, provider, is_answer, what)
    finally:
        await response.aclose()


def json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` decoded, when it is a JSON object; else None."""
    try:
        data = json_text.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


async def read_json_object(
    response: httpx.Response, provider: str, is_answer: Callable[[dict[str, Any]], bool], what: str
) -> tuple[bytes, dict[str, Any]]:
    """Read a whole upstream answer: its bytes and its JSON object, which ``is_answer`` must
    accept; anything else means the upstream broke (502)."""
    try:
        raw = await response.aread()
    except TRANSPORT_FAILURES as exc:
        raise upstream_error(provider, exc) from exc
    data = json_object(raw)
    if data is None or not is_answer(data):
        raise UpstreamUnavailable(
            f"The upstream provider '{provider}' returned a response that is not {what}."
        )
    return raw, data


def ended_early(provider: str) -> UpstreamUnavailable:
    """A stream that stopped before its last event: the call failed, whatever came before."""
    return UpstreamUnavailable(
        f"The upstream provider '{provider}' ended the stream before it finished."
    )


@contextlib.contextmanager
def keeping_usage(usage: Callable[[], Usage | None]) -> Iterator[None]:
    """Around a stream: a failure carries the usage counted so far (``usage_so_far``), so that
    the ledger bills what the upstream will."""
    try:
        yield
    except ProviderError as failure:
        if failure.usage_so_far is None:
            failure.usage_so_far = usage()
        raise
