"""Tenant key authentication, cached in process.

A key is looked up by its clear prefix, then its SHA-256 is compared in constant time. Lookups
(found or not) are cached for ``TOLLGATE_AUTH_CACHE_SECONDS`` (default 5 s), so a busy key costs no
database round trip; a revoked or expired key, or a deactivated tenant, stops working within that
bound, and at once in the process that made the change (``forget``). The cached entry carries the
tenant's and the key's limits (allow-lists, rate limits, budgets): a change in the admin applies
within the same bound.

While the database is down, a known key keeps working from its cached entry however old
(stale-while-error: a revocation needs the database anyway), and a key the cache cannot vouch
for is a 503 with Retry-After (``gateway.outage``). Failed authentications are throttled per
client address (``gateway.tenants.auth_throttle``); unknown prefixes are cached apart from the known
keys, so a flood of random keys can evict only other unknown prefixes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.http import HttpRequest

from gateway.limits.policy import NO_LIMITS, CallerLimits
from gateway.models import PREFIX_LENGTH, ApiKey, has_expired, key_matches
from gateway.outage import read_database
from gateway.tenants import auth_throttle
from providers.errors import AuthenticationFailed, GatewayError


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant and the key, as the rest of the request needs them."""

    tenant_id: int
    tenant_name: str
    key_id: int
    key_prefix: str
    limits: CallerLimits = NO_LIMITS
    """Allow-lists, rate limits and budgets of tenant and key (``gateway.limits.policy``)."""


@dataclass(frozen=True, slots=True)
class _CachedKey:
    caller: Caller
    key_hash: str
    enabled: bool
    expires_at: datetime | None
    fetched_at: float


class KeyCache:
    """Known keys by prefix, and prefixes recently looked up in vain, each bounded on its own
    (the oldest entry goes first): a flood of random keys fills only the second, and never
    sends the known keys back to the database."""

    def __init__(self, known_max: int = 100_000, unknown_max: int = 10_000) -> None:
        self.known: dict[str, _CachedKey] = {}
        self.unknown: OrderedDict[str, float] = OrderedDict()  # prefix -> when looked up
        self.known_max = known_max
        self.unknown_max = unknown_max
        self.lookups = 0
        """Database lookups so far (tests count them)."""

    def is_unknown(self, prefix: str, now: float) -> bool:
        at = self.unknown.get(prefix)
        return at is not None and now - at <= settings.TOLLGATE_AUTH_CACHE_SECONDS

    def store(self, prefix: str, entry: _CachedKey | None, now: float) -> None:
        self.forget(prefix)
        if entry is None:
            self.unknown[prefix] = now
            if len(self.unknown) > self.unknown_max:
                self.unknown.popitem(last=False)
        else:
            self.known[prefix] = entry
            if len(self.known) > self.known_max:
                del self.known[next(iter(self.known))]

    def forget(self, prefix: str) -> None:
        self.known.pop(prefix, None)
        self.unknown.pop(prefix, None)

    def clear(self) -> None:
        self.known.clear()
        self.unknown.clear()


_key_cache = KeyCache()


def bearer_token(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")  # as request.headers, which it builds
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def caller_of(request: HttpRequest, *, x_api_key: bool = False) -> Caller:
    """Who sent ``request``: its key as Bearer (or, on Anthropic's API, ``x-api-key``, which
    wins), checked against its client address's allowance of failures."""
    key = request.META.get("HTTP_X_API_KEY") if x_api_key else None
    return await authenticate(key or bearer_token(request), client_address(request))


def client_address(request: HttpRequest) -> str:
    """The ASGI scope's client host (uvicorn's; behind a proxy, see --proxy-headers)."""
    return str(request.META.get("REMOTE_ADDR") or "")


def _fetch(prefix: str) -> _CachedKey | None:
    key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
    if key is None:
        return None
    caller = Caller(key.tenant_id, key.tenant.name, key.pk, key.prefix, CallerLimits.of(key))
    return _CachedKey(caller, key.key_hash, key.is_enabled(), key.expires_at, time.monotonic())


async def _lookup(
    prefix: str, raw_key: str, stale: _CachedKey | None, client: str
) -> tuple[_CachedKey | None, bool]:
    """The key's entry, from the database unless the negative cache knows it is unknown, and
    whether a failure was charged to ``client`` in advance (charging before the lookup keeps
    concurrent guesses from one address on one allowance). A client out of its allowance gets
    no lookup, unless its key is the one a stale entry vouches for, or a lookup of the same
    prefix is already under way (it costs nothing more). A database outage keeps a stale entry
    in service."""
    now = time.monotonic()
    if _key_cache.is_unknown(prefix, now):
        return None, False
    joining = prefix in _pending
    charged = not joining and not (stale is not None and _matches(stale, raw_key))
    if charged and (refusal := auth_throttle.charge(client)) is not None:
        raise refusal
    try:
        fetched = await asyncio.shield(_shared_fetch(prefix))
    except GatewayError:
        if charged:
            auth_throttle.refund(client)  # an outage is no failure of the client's
        if stale is not None:
            return stale, False
        raise
    if not joining:
        if fetched is None:
            auth_throttle.failure_summary.looked_up()
        _key_cache.store(prefix, fetched, now)
    return fetched, charged


_pending: dict[str, asyncio.Future[_CachedKey | None]] = {}
"""Lookups under way, by prefix: concurrent calls with a key not cached yet (a cold start under
load) share one database lookup, which a caller that hangs up does not cancel for the others."""


def _shared_fetch(prefix: str) -> asyncio.Future[_CachedKey | None]:
    lookup = _pending.get(prefix)
    if lookup is None:
        _key_cache.lookups += 1
        lookup = asyncio.ensure_future(read_database(lambda: _fetch(prefix), "the API key"))
        _pending[prefix] = lookup
        lookup.add_done_callback(lambda done: _settled(prefix, done))
    return lookup


def _settled(prefix: str, lookup: asyncio.Future[_CachedKey | None]) -> None:
    _pending.pop(prefix, None)
    if not lookup.cancelled():
        lookup.exception()  # retrieved: every caller waiting on it raises it on its own


def _matches(cached: _CachedKey, raw_key: str) -> bool:
    return key_matches(cached.key_hash, raw_key)


async def authenticate(raw_key: str | None, client: str = "") -> Caller:
    """The caller of ``raw_key``, or ``AuthenticationFailed`` (429 ``TooManyAuthenticationFailures``
    past the ``client`` address's allowance of failures, 503 ``ServiceUnavailable`` when the
    database is needed and down)."""
    if not raw_key:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    prefix = raw_key[:PREFIX_LENGTH]
    cached = _key_cache.known.get(prefix)
    charged = False
    if (
        cached is None
        or time.monotonic() - cached.fetched_at > settings.TOLLGATE_AUTH_CACHE_SECONDS
    ):
        cached, charged = await _lookup(prefix, raw_key, cached, client)
    if cached is None or not _matches(cached, raw_key):
        error = AuthenticationFailed("Incorrect API key provided.")
        raise auth_throttle.failed(client, error, charged)
    if not cached.enabled or has_expired(cached.expires_at):
        error = AuthenticationFailed("This API key has been revoked or has expired.")
        raise auth_throttle.failed(client, error, charged)
    if charged:
        auth_throttle.refund(client)
    return cached.caller


def forget(prefix: str) -> None:
    """Drop a key from this process's cache (after revoking it, say)."""
    _key_cache.forget(prefix)


def forget_tenant(tenant_id: int) -> None:
    """Drop a tenant's keys from this process's cache (after changing its limits, say)."""
    for prefix, cached in list(_key_cache.known.items()):
        if cached.caller.tenant_id == tenant_id:
            _key_cache.forget(prefix)
