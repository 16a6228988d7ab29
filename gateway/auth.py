"""Tenant key authentication, cached in process.

A key is looked up by its clear prefix, then its SHA-256 is compared in constant time. Lookups
(found or not) are cached for ``TOLLGATE_AUTH_CACHE_SECONDS`` (default 5 s), so a busy key costs no
database round trip; a revoked or expired key, or a deactivated tenant, stops working within that
bound, and at once in the process that made the change (``forget``). The cached entry carries the
tenant's and the key's limits (allow-lists, rate limits, budgets): a change in the admin applies
within the same bound.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest
from django.utils import timezone

from gateway.models import PREFIX_LENGTH, ApiKey, hash_key
from gateway.policy import NO_LIMITS, CallerLimits
from providers.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tenant and the key, as the rest of the request needs them."""

    tenant_id: int
    tenant_name: str
    key_id: int
    key_prefix: str
    limits: CallerLimits = NO_LIMITS
    """Allow-lists, rate limits and budgets of the tenant and the key (``gateway.policy``)."""


@dataclass(frozen=True, slots=True)
class _CachedKey:
    caller: Caller | None  # None: no such key
    key_hash: str
    usable: bool
    expires_at: datetime | None
    fetched_at: float


_key_cache: dict[str, _CachedKey] = {}
_KEY_CACHE_MAX = 100_000


def bearer_token(request: HttpRequest) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


@sync_to_async
def _fetch(prefix: str) -> _CachedKey:
    # The API skips Django's per-request connection housekeeping (gateway.asgi): do it here,
    # in the thread that owns the connection, right before using it.
    close_old_connections()
    key = ApiKey.objects.select_related("tenant").filter(prefix=prefix).first()
    now = time.monotonic()
    if key is None:
        return _CachedKey(None, "", False, None, now)
    caller = Caller(key.tenant_id, key.tenant.name, key.pk, key.prefix, CallerLimits.of(key))
    usable = key.revoked_at is None and key.tenant.is_active
    return _CachedKey(caller, key.key_hash, usable, key.expires_at, now)


async def authenticate(raw_key: str | None) -> Caller:
    if not raw_key:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    prefix = raw_key[:PREFIX_LENGTH]
    cached = _key_cache.get(prefix)
    if (
        cached is None
        or time.monotonic() - cached.fetched_at > settings.TOLLGATE_AUTH_CACHE_SECONDS
    ):
        cached = await _fetch(prefix)
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[prefix] = cached
    if cached.caller is None or not hmac.compare_digest(cached.key_hash, hash_key(raw_key)):
        raise AuthenticationFailed("Incorrect API key provided.")
    if not cached.usable or (cached.expires_at is not None and cached.expires_at <= timezone.now()):
        raise AuthenticationFailed("This API key has been revoked or has expired.")
    return cached.caller


def forget(prefix: str) -> None:
    """Drop a key from this process's cache (after revoking it, say)."""
    _key_cache.pop(prefix, None)


def forget_tenant(tenant_id: int) -> None:
    """Drop a tenant's keys from this process's cache (after changing its limits, say)."""
    for prefix, cached in list(_key_cache.items()):
        if cached.caller is not None and cached.caller.tenant_id == tenant_id:
            _key_cache.pop(prefix, None)
