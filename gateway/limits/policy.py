"""What a caller may do: model allow-lists, budgets and rate limits, checked before any call goes
upstream (``Policy.admit``) and settled after it (``Admission.settle``).

The limits of a tenant and of its key come with the cached key lookup (``gateway.tenants.auth``),
so a call costs no database round trip; the counters live in process memory or in Redis
(``gateway.limits.counters``). A caller with no rate limit and no budget skips the counters
entirely.

The budget guarantee: a call is admitted only if the scope's settled spending, plus the
reservations of the calls in flight, plus this call's reservation (its worst-case cost) stay
within the cap. So spending overshoots the cap only when a call's real cost exceeds its
reservation (a prompt longer than its 4-characters-a-token estimate, say), and never because of
calls admitted after the cap was reached.

A scope's spending is read from the ledger the first time it is counted; while the database is
down that read fails, and the call gets 503 with Retry-After (``ServiceUnavailable``) rather than
being admitted against a budget nobody can check. Scopes already counted are not affected. When
the counters live in Redis, its outages are ``gateway.limits.resilient_counters``'s concern.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.db.models import Sum

from gateway.limits.counters import Check, CounterStore, MemoryCounters, RedisCounters, Verdict
from gateway.limits.resilient_counters import ResilientCounters
from gateway.models import UsageRecord
from gateway.outage import read_database
from providers.errors import GatewayError, PermissionDenied, PolicyError, ServiceUnavailable

if TYPE_CHECKING:
    from gateway.models import ApiKey, Limits
    from providers.factory import ProviderFactory, Route

log = logging.getLogger("tollgate.policy")

UNIT = Decimal("0.00000001")
"""Budget counters count integer units of 1e-8 USD."""


# --- the limits, as the auth cache keeps them -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """The counted limits of a tenant or of a key (allow-lists are kept apart)."""

    scope: str  # "tenant:3", "key:17"
    rpm: int | None
    tpm: int | None
    budget_usd: Decimal | None
    period: str

    @classmethod
    def of(cls, scope: str, limits: Limits) -> ScopeLimits | None:
        if limits.rpm_limit is None and limits.tpm_limit is None and limits.budget_usd is None:
            return None
        return cls(
            scope, limits.rpm_limit, limits.tpm_limit, limits.budget_usd, limits.budget_period
        )


@dataclass(frozen=True, slots=True)
class CallerLimits:
    tenant_models: frozenset[str] = frozenset()  # empty: every model
    key_models: frozenset[str] = frozenset()  # empty: the tenant's
    scopes: tuple[ScopeLimits, ...] = ()

    @classmethod
    def of(cls, key: ApiKey) -> CallerLimits:
        tenant = key.tenant
        scopes = (
            ScopeLimits.of(f"tenant:{tenant.pk}", tenant),
            ScopeLimits.of(f"key:{key.pk}", key),
        )
        return cls(
            frozenset(tenant.model_allow_list()),
            frozenset(key.model_allow_list()),
            tuple(scope for scope in scopes if scope is not None),
        )

    def allows(self, model: str, factory: ProviderFactory, route: Route | None = None) -> bool:
        return _listed(self.tenant_models, model, factory, route) and _listed(
            self.key_models, model, factory, route
        )


NO_LIMITS = CallerLimits()


def _listed(
    names: frozenset[str], model: str, factory: ProviderFactory, route: Route | None
) -> bool:
    """Is ``model`` in ``names`` (empty: yes)? A name matches by itself, as ``provider/*``, or
    when it routes to the same upstream model (the alias ``gpt-4o-mini`` and
    ``openai/gpt-4o-mini`` are one model)."""
    if not names or model in names:
        return True
    if route is None:
        try:
            route = factory.resolve(model)
        except GatewayError:
            return False
    target = (route.provider_name, route.upstream_model)
    if f"{target[0]}/*" in names:
        return True
    for name in names:
        try:
            other = factory.resolve(name)
        except GatewayError:
            continue
        if (other.provider_name, other.upstream_model) == target:
            return True
    return False


# --- errors ---------------------------------------------------------------------------------------


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"

    def __init__(self, model: str) -> None:
        super().__init__(f"This API key may not use the model `{model}`.", param="model")


class RateLimited(PolicyError):
    """429 ``rate_limit_exceeded``, with Retry-After and the x-ratelimit-* headers."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class BudgetExceeded(PolicyError):
    type = "insufficient_quota"
    code = "insufficient_quota"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers: dict[str, str] = {}


# --- periods --------------------------------------------------------------------------------------

_PERIOD_TTL = {"daily": 2 * 86400, "monthly": 32 * 86400, "total": 7 * 86400}


def period_of(period: str, now: datetime) -> tuple[str, datetime | None]:
    """The counter name of the UTC calendar period containing ``now``, and its start."""
    if period == "daily":
        return _period_start("d", now.year, now.month, now.day, now.tzinfo)
    if period == "monthly":
        return _period_start("m", now.year, now.month, 1, now.tzinfo)
    return "total", None


@lru_cache(maxsize=16)
def _period_start(
    prefix: str, year: int, month: int, day: int, tz: tzinfo | None
) -> tuple[str, datetime]:
    """Made once a period rather than on every call of a tenant with a budget."""
    start = datetime(year, month, day, tzinfo=tz)
    return prefix + start.strftime("%Y%m%d" if prefix == "d" else "%Y%m"), start


def to_units(usd: Decimal, rounding: str = ROUND_HALF_UP) -> int:
    return int((usd / UNIT).to_integral_value(rounding=rounding))


def duration(seconds: int) -> str:
    """OpenAI's reset format: ``1s``, ``1m0s``."""
    return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"


# --- admission ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a call may use, before it runs: tokens for rate limits, worst-case cost for budgets."""

    tokens: int
    cost: Decimal


class Admission:
    """A call let through: its counted checks, to be settled exactly once with what it used."""

    __slots__ = ("admitted_at", "checks", "headers", "hold", "policy", "second", "settled")

    def __init__(
        self,
        policy: Policy,
        checks: list[Check],
        admitted_at: datetime,
        headers: dict[str, str],
        hold: int = 0,
    ) -> None:
        self.policy = policy
        self.checks = checks
        self.admitted_at = admitted_at
        """When the call was admitted: its budgets' period, which its ledger row is dated in
        (``Call.record``), so that the period's counter and its rows agree."""
        self.second = int(admitted_at.timestamp())
        self.headers = headers
        self.hold = hold  # the store's handle on the call in flight
        self.settled = False

    def settle(self, tokens: int, cost: Decimal) -> None:
        if self.settled:
            return
        self.settled = True
        self.policy.settle(self, tokens, to_units(cost))

    async def release(self) -> None:
        """Give back what the call was admitted for, its estimated tokens and its reservation,
        before it is admitted again (for its fallback). It stays to be settled: should the call
        not be admitted again, it counts what the call used, with nothing more to give back,
        where it was counted (``CounterStore.give_back``); should it be, it is settled with
        nothing used (``Call.fall_back_to``).

        Awaited, not merely sent: in Redis, a release still on its way when the fallback is
        admitted would refuse the fallback for room the call's own first admission holds."""
        if self.settled:
            return
        settling = self.policy.give_back(self)
        self.checks = [check.given_back() for check in self.checks]
        if settling is not None:
            # Waited for, neither cancelled with the caller nor raising: a failed settlement
            # is logged (``Policy._settled``) and the store's own fallback covers it.
            await asyncio.wait((settling,))


class Policy:
    def __init__(self, store: CounterStore | None = None) -> None:
        self.store: CounterStore = store or MemoryCounters()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, redis_url: str) -> Policy:
        if not redis_url:
            return cls(MemoryCounters())
        redis = RedisCounters(redis_url, timeout=settings.TOLLGATE_REDIS_TIMEOUT_SECONDS)
        return cls(ResilientCounters(redis, fail_open=settings.TOLLGATE_REDIS_FAILURE == "open"))

    def check_model(
        self, limits: CallerLimits, model: str, factory: ProviderFactory, route: Route
    ) -> None:
        if (limits.tenant_models or limits.key_models) and not limits.allows(model, factory, route):
            raise ModelNotAllowed(model)

    async def admit(
        self,
        limits: CallerLimits,
        estimate: Estimate,
        *,
        request: bool = True,
        spends: bool = True,
    ) -> Admission | None:
        """Count the call against its scopes' limits, or raise ``RateLimited`` /
        ``BudgetExceeded``. ``None`` when nothing is counted. ``request`` False: the call's
        request is counted already (a call admitted again for its fallback): only its tokens
        and its cost are. ``spends`` False: the call costs nothing (a token count): no budget
        holds it, only the rate limits."""
        if not limits.scopes:
            return None
        now = datetime.now(UTC)
        checks = [self._check(scope, estimate, now, request, spends) for scope in limits.scopes]
        # Each scope may ask to be loaded, twice when the store falls back meanwhile (Redis).
        for _ in range(2 * len(checks) + 1):
            verdict = await self._counted(checks, now)
            if verdict.refusal != "load":
                break
            await self._load(checks[verdict.index], limits.scopes[verdict.index], now)
        else:
            raise ServiceUnavailable("The gateway could not load this call's budget counters.")
        if verdict.refusal is not None:
            self._refuse(verdict, checks, limits.scopes, estimate)
        return Admission(self, checks, now, self._headers(verdict, checks), verdict.hold)

    async def _counted(self, checks: list[Check], now: datetime) -> Verdict:
        """The store's verdict. Shielded: a caller cancelled while the store counts it (a
        client gone during a Redis round trip) must not leave its reservation behind, so a
        count that lands after the cancellation is released at once. A store that counts at
        once (in memory) has nothing to await: no task to shield."""
        second = int(now.timestamp())
        if self.store.counts_at_once:
            return cast(MemoryCounters, self.store).admit_now(checks, second)
        counting = asyncio.ensure_future(self.store.admit(checks, second))
        try:
            return await asyncio.shield(counting)
        except asyncio.CancelledError:
            counting.add_done_callback(lambda done: self._release_orphan(done, checks, now))
            raise

    def _release_orphan(
        self, done: asyncio.Future[Verdict], checks: list[Check], now: datetime
    ) -> None:
        if done.cancelled() or done.exception() is not None or done.result().refusal is not None:
            return
        Admission(self, checks, now, {}, done.result().hold).settle(0, Decimal(0))

    def settle(self, admission: Admission, tokens: int, cost: int) -> asyncio.Task[None] | None:
        """Count what an admitted call used, at once in memory; in Redis, by a task the caller
        need not wait for (``drain`` does)."""
        checks, second = admission.checks, admission.second
        if self.store.counts_at_once:
            cast(MemoryCounters, self.store).settle_now(checks, second, tokens, cost)
            return None
        return self._in_background(
            lambda: self.store.settle(checks, second, tokens, cost, admission.hold)
        )

    def give_back(self, admission: Admission) -> asyncio.Task[None] | None:
        """Release what an admitted call holds before it is admitted again
        (``Admission.release``): at once in memory; in Redis, by a task it waits for."""
        checks, second = admission.checks, admission.second
        if self.store.counts_at_once:
            cast(MemoryCounters, self.store).settle_now(checks, second, 0, 0)
            return None
        return self._in_background(lambda: self.store.give_back(checks, second, admission.hold))

    def _in_background(
        self, settlement: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None] | None:
        """Run a store's ``settlement`` as a task of its own, kept until it ends."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("a call was settled outside the event loop; its counters are not updated")
            return None
        task = loop.create_task(settlement())
        self._pending.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("could not settle a call's counters: %s", exc)

    async def drain(self) -> None:
        """Wait for the settlements under way (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await self.store.aclose()

    # --- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _check(
        scope: ScopeLimits,
        estimate: Estimate,
        now: datetime,
        request: bool = True,
        spends: bool = True,
    ) -> Check:
        period, _ = period_of(scope.period, now)
        budget = scope.budget_usd if spends else None  # None: no budget holds the call
        return Check(
            scope=scope.scope,
            rpm=scope.rpm if request else None,  # None: the request is neither held nor counted
            tpm=scope.tpm,
            tokens=estimate.tokens if scope.tpm is not None else 0,
            cap=to_units(budget, ROUND_HALF_UP) if budget is not None else None,
            reserve=to_units(estimate.cost, ROUND_CEILING) if budget is not None else 0,
            period=period,
            ttl=_PERIOD_TTL.get(scope.period, _PERIOD_TTL["total"]),
        )

    async def _load(self, check: Check, scope: ScopeLimits, now: datetime) -> None:
        """Start a budget counter from the ledger: one aggregate query, once per process even
        when many calls ask at the same time."""
        key = check.budget_key
        pending = self._loading.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            _, start = period_of(scope.period, now)
            spent = await read_database(
                lambda: _spent_since(scope.scope, start), "this call's budget spending"
            )
            await self.store.load_spent(check, to_units(spent))
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._loading[key]

    @staticmethod
    def _refuse(
        verdict: Verdict, checks: list[Check], scopes: tuple[ScopeLimits, ...], estimate: Estimate
    ) -> None:
        check, scope = checks[verdict.index], scopes[verdict.index]
        whose = "tenant's" if scope.scope.startswith("tenant:") else "API key's"
        if verdict.refusal == "budget":
            left = max(Decimal(check.cap or 0) - verdict.spent - verdict.reserved, Decimal(0))
            raise BudgetExceeded(
                f"You exceeded your current quota: the {whose} {scope.period} budget of "
                f"${scope.budget_usd} has ${(left * UNIT).normalize():f} left (calls in flight "
                f"included), less than this call may cost "
                f"(${estimate.cost.quantize(UNIT, ROUND_CEILING).normalize():f})."
            )
        headers = {"retry-after": str(verdict.retry_after)}
        if verdict.refusal == "rpm":
            what = f"requests per minute (RPM): limit {scope.rpm}"
            headers |= {
                "x-ratelimit-limit-requests": str(scope.rpm),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": duration(verdict.retry_after),
            }
        else:
            what = f"tokens per minute (TPM): limit {scope.tpm}, requested {check.tokens}"
            headers |= {
                "x-ratelimit-limit-tokens": str(scope.tpm),
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": duration(verdict.retry_after),
            }
        raise RateLimited(
            f"Rate limit reached for the {whose} {what}. "
            f"Please try again in {verdict.retry_after}s.",
            headers,
        )

    @staticmethod
    def _headers(verdict: Verdict, checks: list[Check]) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers of the tightest scope, for the successful response."""
        headers: dict[str, str] = {}
        best_requests = best_tokens = math.inf
        for check, window in zip(checks, verdict.windows, strict=True):
            if check.rpm is not None and check.rpm - window.requests < best_requests:
                best_requests = check.rpm - window.requests
                headers["x-ratelimit-limit-requests"] = str(check.rpm)
                headers["x-ratelimit-remaining-requests"] = str(max(check.rpm - window.requests, 0))
                headers["x-ratelimit-reset-requests"] = duration(window.requests_reset)
            if check.tpm is not None and check.tpm - window.tokens < best_tokens:
                best_tokens = check.tpm - window.tokens
                headers["x-ratelimit-limit-tokens"] = str(check.tpm)
                headers["x-ratelimit-remaining-tokens"] = str(max(check.tpm - window.tokens, 0))
                headers["x-ratelimit-reset-tokens"] = duration(window.tokens_reset)
        return headers


def _spent_since(scope: str, start: datetime | None) -> Decimal:
    kind, _, pk = scope.partition(":")
    rows = UsageRecord.objects.filter(**{"tenant_id" if kind == "tenant" else "api_key_id": pk})
    if start is not None:
        rows = rows.filter(created_at__gte=start)
    total = rows.aggregate(total=Sum("cost_usd"))["total"]
    return Decimal(total or 0)
