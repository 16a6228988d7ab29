"""The router: behind ``Call.upstream``, it chooses a deployment for each attempt, retries what
is safe to retry, falls back to other aliases, and keeps each deployment's and upstream key's
health (``gateway.routing.health``).

One call's attempts, in order:

- **Choice.** Among the alias's deployments: one this call has not tried yet before one it has,
  a usable one (healthy, or half-open with its probe free) before one cooling down, the lowest
  ``priority``, then by ``weight``: at random, or, when the call carries an affinity key
  (``prompt_cache_key``, ``user``, Claude Code's session id), the same deployment for the same
  key while it stays usable (weighted rendezvous hashing), so upstream prompt caches keep
  hitting. When every deployment is cooling down, the one that failed longest ago is tried.
- **Retry**, at most ``max_retries`` times per alias and never once ``deadline_seconds`` have
  passed: after a connection error, a timeout before the first byte, or an upstream 408, 409,
  429, 500, 502, 503, 504 or 529. A retry on a deployment this call has not tried goes at once;
  on one it has, it waits a random time up to ``backoff_base * 2**n`` (capped at
  ``backoff_max``, full jitter) or the upstream's ``retry-after`` when longer (capped at
  ``retry_after_max``). Never after the first byte of an answer has reached the client (an
  attempt ends when the answer starts), and never after 400, 401, 403, 404 or 422: those are the
  caller's answer (401 and 403 also cool the upstream key down).
- **Fallback**, when every attempt on the alias failed with a retryable error (``fallbacks``) or
  the upstream said the prompt is too long (``context_window_fallbacks``): the next alias in the
  list that the caller may use, with its own retries. The call is admitted again on the
  fallback's prices (``Call.fall_back_to``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from gateway.routing.health import Health
from providers.base import CREDENTIAL_USED
from providers.config import RouterConfig
from providers.errors import (
    CallerError,
    ContextWindowExceeded,
    GatewayError,
    PolicyError,
    ProviderError,
    UpstreamTimeout,
)
from providers.factory import Route

if TYPE_CHECKING:
    from providers.config import ModelConfig

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
KEY_FAILURE_STATUSES = frozenset({401, 403, 429})
"""Statuses that speak of the upstream key rather than the deployment."""


class RoutedCall(Protocol):
    """What the router needs of a call (``gateway.calls.pipeline.Call``)."""

    routes: tuple[Route, ...]
    route: Route | None
    affinity_key: str | None
    attempts: int
    fallback_used: bool

    async def fall_back_to(self, alias: str) -> None: ...

    def attempted(self, route: Route, started: float, error: GatewayError | None) -> None: ...


def key_target(provider: str, key: str) -> str:
    """An upstream key's name in the health state: never the key itself."""
    return f"key:{provider}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def is_retryable(error: GatewayError) -> bool:
    if isinstance(error, ProviderError) and error.upstream_status is not None:
        return error.upstream_status in RETRY_STATUSES
    return isinstance(error, ProviderError) and error.retryable


class Router:
    def __init__(
        self,
        config: RouterConfig,
        health: Health,
        models: dict[str, ModelConfig],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.health = health
        self.models = models
        self.sleep = sleep
        self.random = rng or random.Random()
        self.clock = clock
        self.key_answered_at: dict[str, float] = {}
        """When an upstream key last got an answer (wall time, this process), by the key: the
        admin's provider keys page shows it (``gateway.routing.views.key_row``)."""

    async def run(self, call: RoutedCall, attempt: Callable[[Route], Awaitable[T]]) -> T:
        started = self.clock()
        primary = call.routes[0].requested_model
        tried_aliases = {primary}
        failure: ProviderError
        while True:
            try:
                return await self._on_alias(call, attempt, started)
            except ContextWindowExceeded as error:
                failure, fallbacks = error, self._fallbacks(primary, "context_window_fallbacks")
            except ProviderError as error:
                if not is_retryable(error):
                    raise
                failure, fallbacks = error, self._fallbacks(primary, "fallbacks")
            if not await self._fall_back(call, fallbacks, tried_aliases):
                raise failure

    @staticmethod
    async def _fall_back(call: RoutedCall, fallbacks: tuple[str, ...], tried: set[str]) -> bool:
        """Move the call to the next fallback it may use; False when there is none left."""
        for alias in fallbacks:
            if alias in tried:
                continue
            tried.add(alias)
            try:
                await call.fall_back_to(alias)
            except (CallerError, PolicyError):
                continue  # not allowed to the caller, cannot serve the call, or over budget
            call.fallback_used = True
            return True
        return False

    def _fallbacks(self, alias: str, key: str) -> tuple[str, ...]:
        model = self.models.get(alias)
        return getattr(model, key) if model is not None else ()

    async def _on_alias(
        self, call: RoutedCall, attempt: Callable[[Route], Awaitable[T]], started: float
    ) -> T:
        tried: dict[str, int] = {}
        retry = 0
        while True:
            route = self.choose(call.routes, tried, call.affinity_key)
            call.route = route
            call.attempts += 1
            tried[route.deployment] = tried.get(route.deployment, 0) + 1
            token = CREDENTIAL_USED.set(None)
            begun = time.perf_counter()
            try:
                result = await self._attempt(route, attempt)
            except GatewayError as error:
                call.attempted(route, begun, error)
                self._failed(route, error)
                if not is_retryable(error) or retry >= self.config.max_retries:
                    raise
                delay = self._delay(call.routes, tried, retry, error)
                deadline = started + self.config.deadline_seconds
                if delay is None or self.clock() + delay > deadline:
                    raise
                retry += 1
                if delay > 0:
                    await self.sleep(delay)
                continue
            else:
                if (key := CREDENTIAL_USED.get()) is not None:
                    self.key_answered_at[key] = time.time()
            finally:
                CREDENTIAL_USED.reset(token)
            call.attempted(route, begun, None)
            self.health.succeeded(route.deployment)
            return result

    @staticmethod
    async def _attempt(route: Route, attempt: Callable[[Route], Awaitable[T]]) -> T:
        """One attempt, held to the route's first-byte (and total) timeout: an attempt ends
        when the answer starts (a stream's first chunk; a JSON answer whole)."""
        limits = [s for s in (route.first_byte_timeout, route.total_timeout) if s is not None]
        if not limits:
            return await attempt(route)
        try:
            async with asyncio.timeout(min(limits)):
                return await attempt(route)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream provider '{route.provider_name}' did not answer within "
                f"{min(limits):g} s."
            ) from None

    def _failed(self, route: Route, error: GatewayError) -> None:
        if not isinstance(error, ProviderError):
            return
        status = error.upstream_status
        retry_after = error.retry_after if status == 429 else None
        if status in KEY_FAILURE_STATUSES and (key := CREDENTIAL_USED.get()) is not None:
            self.health.failed(key_target(route.provider_name, key), error.code or "", retry_after)
            if status != 429:
                return  # a bad key is not a bad deployment
        if is_retryable(error):
            self.health.failed(route.deployment, error.code or error.type, retry_after)

    def _delay(
        self, routes: tuple[Route, ...], tried: dict[str, int], retry: int, error: GatewayError
    ) -> float | None:
        """How long to wait before the next attempt; None: do not retry."""
        if any(r.deployment not in tried and self.health.usable(r.deployment) for r in routes):
            return 0.0  # another deployment is ready: go at once
        cap = self.config.backoff_max_seconds
        delay = self.random.uniform(0, min(cap, self.config.backoff_base_seconds * 2**retry))
        retry_after = error.retry_after if isinstance(error, ProviderError) else None
        if retry_after is not None:
            if retry_after > self.config.retry_after_max_seconds:
                return None  # longer than we wait: the deployment cools down instead
            delay = max(delay, retry_after)
        return delay

    def choose(
        self, routes: tuple[Route, ...], tried: dict[str, int], affinity_key: str | None
    ) -> Route:
        if len(routes) == 1 and not self.health.breakers:
            return routes[0]  # the hot path: one deployment, nothing ever failed
        for fresh_only in (True, False):
            usable = [
                route
                for route in routes
                if (not fresh_only or route.deployment not in tried)
                and self.health.usable(route.deployment)
            ]
            if usable:
                best = min(route.priority for route in usable)
                group = [route for route in usable if route.priority == best]
                chosen = self._weighted(group, affinity_key)
                if self.health.claim(chosen.deployment):
                    return chosen
        # Every deployment is cooling down: the one that failed longest ago.
        return min(routes, key=lambda route: self.health.last_failure(route.deployment))

    def _weighted(self, group: list[Route], affinity_key: str | None) -> Route:
        if len(group) == 1:
            return group[0]
        if affinity_key is None:
            point = self.random.random() * sum(route.weight for route in group)
            for route in group:
                point -= route.weight
                if point < 0:
                    return route
            return group[-1]
        return max(group, key=lambda route: _rendezvous(affinity_key, route))


def _rendezvous(key: str, route: Route) -> float:
    """Weighted rendezvous hashing: each key prefers one deployment, spread by weight, and keeps
    it as long as that deployment is in the group."""
    digest = hashlib.blake2b(f"{key}\0{route.deployment}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / 2**64  # (0, 1]
    return unit ** (1 / route.weight)
