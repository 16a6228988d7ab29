"""The router's decisions, with deployments faked: which deployment each attempt goes to, what is
retried and after how long, when a deployment cools down and comes back, and fallbacks.
End to end, with real upstream processes: tests/test_e2e_routing.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.routing.health import Health
from gateway.routing.router import Router, key_target
from providers.base import CREDENTIAL_USED
from providers.config import RouterConfig
from providers.errors import (
    ContextWindowExceeded,
    GatewayError,
    ProviderError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_for_upstream_status,
)
from providers.factory import Route


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def route(provider: str, alias: str = "m", weight: float = 1.0, priority: int = 0) -> Route:
    return Route(alias, SimpleNamespace(name=provider), "up", None, weight, priority)  # type: ignore[arg-type]


class FakeCall:
    """What the router needs of a call; ``fallbacks`` maps an alias to its routes."""

    def __init__(self, routes: tuple[Route, ...], fallbacks: dict[str, Any] | None = None) -> None:
        self.routes = routes
        self.route: Route | None = None
        self.affinity_key: str | None = None
        self.attempts = 0
        self.fallback_used = False
        self.fallbacks = fallbacks or {}
        self.attempt_log: list[tuple[str, GatewayError | None]] = []

    def attempted(self, route: Route, started: float, error: GatewayError | None) -> None:
        self.attempt_log.append((route.deployment, error))

    async def fall_back_to(self, alias: str) -> None:
        target = self.fallbacks[alias]
        if isinstance(target, GatewayError):
            raise target
        self.routes, self.route = target, target[0]


def upstream_error(status: int, retry_after: float | None = None) -> ProviderError:
    error = error_for_upstream_status(status, f"HTTP {status}")
    error.retry_after = retry_after
    return error


class Script:
    """An attempt function: each deployment answers from its own list of outcomes (an error to
    raise, or anything else to return), the last one repeating."""

    def __init__(self, **outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[str] = []

    def __call__(self, chosen: Route) -> Awaitable[Any]:
        async def attempt() -> Any:
            name = chosen.provider_name
            self.calls.append(name)
            queue = self.outcomes[name]
            outcome = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return attempt()


def make_router(
    models: dict[str, Any] | None = None, **config: Any
) -> tuple[Router, Health, Clock, list[float]]:
    clock = Clock()
    settings = RouterConfig(**config)
    health = Health(settings, clock)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.now += seconds

    return Router(settings, health, models or {}, sleep=sleep, clock=clock), health, clock, sleeps


async def run(router: Router, call: FakeCall, script: Callable[[Route], Awaitable[Any]]) -> Any:
    return await router.run(call, script)  # type: ignore[arg-type]


# --- choice -------------------------------------------------------------------------------------


def test_the_lowest_priority_is_chosen_and_weights_share_the_calls() -> None:
    router, *_ = make_router()
    routes = (route("a", weight=3), route("b", weight=1), route("c", priority=1, weight=100))
    picks = Counter(router.choose(routes, {}, None).provider_name for _ in range(4000))
    assert picks["c"] == 0
    assert 2.5 < picks["a"] / picks["b"] < 3.5


def test_an_affinity_key_keeps_to_one_deployment_and_keys_spread() -> None:
    router, health, clock, _ = make_router()
    routes = (route("a"), route("b"), route("c"))
    first = router.choose(routes, {}, "session-1")
    assert all(router.choose(routes, {}, "session-1") is first for _ in range(50))
    spread = Counter(router.choose(routes, {}, f"session-{i}").provider_name for i in range(300))
    assert len(spread) == 3 and min(spread.values()) > 50
    for _ in range(3):  # the preferred deployment cools down: the key moves...
        health.failed(first.deployment, "upstream_unavailable")
    moved = router.choose(routes, {}, "session-1")
    assert moved is not first
    clock.now += 31  # ...and comes back once it is healthy again
    health.claim(first.deployment)
    health.succeeded(first.deployment)
    assert router.choose(routes, {}, "session-1") is first


# --- retries ------------------------------------------------------------------------------------


async def test_a_failed_attempt_is_retried_at_once_on_another_deployment() -> None:
    router, _, _, sleeps = make_router()
    call = FakeCall((route("a"), route("b", priority=1)))  # "a" first, "b" if it fails
    script = Script(a=[upstream_error(503)], b=["ok"])
    assert await run(router, call, script) == "ok"
    assert script.calls == ["a", "b"] and sleeps == []
    assert call.attempts == 2 and call.route is not None and call.route.provider_name == "b"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_the_callers_errors_are_never_retried(status: int) -> None:
    router, *_ = make_router()
    call = FakeCall((route("a"), route("b")))
    script = Script(a=[upstream_error(status)], b=[upstream_error(status)])
    with pytest.raises(ProviderError):
        await run(router, call, script)
    assert len(script.calls) == 1


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
async def test_retryable_statuses_are_retried(status: int) -> None:
    router, *_ = make_router(backoff_base_seconds=0)
    call = FakeCall((route("a"),))
    script = Script(a=[upstream_error(status), "ok"])
    assert await run(router, call, script) == "ok"
    assert script.calls == ["a", "a"]


async def test_connection_errors_and_timeouts_are_retried() -> None:
    router, *_ = make_router(backoff_base_seconds=0)
    call = FakeCall((route("a"),))
    script = Script(a=[UpstreamUnavailable("refused"), UpstreamTimeout("slow"), "ok"])
    assert await run(router, call, script) == "ok"
    assert call.attempts == 3


async def test_backoff_on_the_same_deployment_is_full_jitter_and_bounded() -> None:
    router, *_, sleeps = make_router(
        max_retries=4, backoff_base_seconds=0.5, backoff_max_seconds=1.5
    )
    call = FakeCall((route("a"),))
    script = Script(a=[upstream_error(502)] * 4 + ["ok"])
    assert await run(router, call, script) == "ok"
    assert len(sleeps) == 4
    for n, slept in enumerate(sleeps):
        assert 0 <= slept <= min(1.5, 0.5 * 2**n)


async def test_retry_after_is_honoured_and_capped() -> None:
    router, *_, sleeps = make_router(retry_after_max_seconds=5)
    call = FakeCall((route("a"),))
    assert await run(router, call, Script(a=[upstream_error(429, 2.5), "ok"])) == "ok"
    assert sleeps and sleeps[0] >= 2.5
    router, *_, sleeps = make_router(retry_after_max_seconds=5)
    with pytest.raises(ProviderError):  # longer than we wait: not retried
        await run(router, FakeCall((route("a"),)), Script(a=[upstream_error(429, 60), "ok"]))
    assert sleeps == []


async def test_max_retries_and_the_deadline_bound_the_attempts() -> None:
    router, *_ = make_router(max_retries=2, backoff_base_seconds=0)
    call = FakeCall((route("a"),))
    with pytest.raises(ProviderError):
        await run(router, call, Script(a=[upstream_error(503)]))
    assert call.attempts == 3
    router, *_ = make_router(max_retries=10, deadline_seconds=3, retry_after_max_seconds=10)
    call = FakeCall((route("a"),))
    with pytest.raises(ProviderError):
        await run(router, call, Script(a=[upstream_error(503, 2.0)]))
    assert call.attempts == 2  # the second wait would end past the deadline


# --- health ---------------------------------------------------------------------------------------


async def test_a_deployment_cools_down_then_is_probed_once() -> None:
    router, health, clock, _ = make_router(cooldown_failures=3, cooldown_seconds=30)
    a, b = route("a"), route("b")
    for _ in range(3):
        health.failed(a.deployment, "upstream_unavailable")
    assert not health.usable(a.deployment)
    assert all(router.choose((a, b), {}, None) is b for _ in range(50))
    clock.now += 30  # half-open: one probe
    assert health.claim(a.deployment)
    assert not health.claim(a.deployment)  # a second caller does not probe meanwhile
    health.failed(a.deployment, "upstream_unavailable")  # the probe failed: cooling again
    assert not health.usable(a.deployment)
    clock.now += 30
    assert health.claim(a.deployment)
    health.succeeded(a.deployment)
    assert health.usable(a.deployment) and health.snapshot()[0]["state"] == "healthy"


async def test_a_429_cools_down_for_the_upstreams_retry_after() -> None:
    router, health, clock, _ = make_router(retry_after_max_seconds=1)
    call = FakeCall((route("a"), route("b")))
    script = Script(a=[upstream_error(429, 7)], b=[upstream_error(429, 7)])
    with pytest.raises(ProviderError):
        await run(router, call, script)
    assert not health.usable("a/up") and not health.usable("b/up")
    clock.now += 6.9
    assert not health.usable("a/up")
    clock.now += 0.2
    assert health.usable("a/up")


async def test_when_every_deployment_cools_down_the_least_recently_failed_is_tried() -> None:
    router, health, clock, _ = make_router(cooldown_failures=1)
    a, b = route("a"), route("b")
    health.failed(b.deployment, "x")
    clock.now += 1
    health.failed(a.deployment, "x")
    assert router.choose((a, b), {}, None) is b


async def test_a_401_cools_the_upstream_key_not_the_deployment() -> None:
    router, health, *_ = make_router(cooldown_failures=1)

    async def attempt(chosen: Route) -> Any:
        CREDENTIAL_USED.set("sk-bad")
        raise upstream_error(401)

    with pytest.raises(ProviderError):
        await router.run(FakeCall((route("a"),)), attempt)  # type: ignore[arg-type]
    assert not health.usable(key_target("a", "sk-bad"))
    assert health.usable("a/up")
    assert "sk-bad" not in str(health.snapshot())


# --- fallbacks ------------------------------------------------------------------------------------


def model(**fields: Any) -> Any:
    return SimpleNamespace(**{"fallbacks": (), "context_window_fallbacks": (), **fields})


async def test_fallbacks_are_tried_in_order_when_every_deployment_fails() -> None:
    models = {"m": model(fallbacks=("banned", "other"))}
    router, *_ = make_router(models, max_retries=1, backoff_base_seconds=0)
    from gateway.limits.policy import ModelNotAllowed

    call = FakeCall(
        (route("a"),), {"banned": ModelNotAllowed("banned"), "other": (route("z", "other"),)}
    )
    script = Script(a=[upstream_error(503)], z=["from z"])
    assert await run(router, call, script) == "from z"
    assert script.calls == ["a", "a", "z"]
    assert call.fallback_used and call.attempts == 3
    assert [(deployment, error is None) for deployment, error in call.attempt_log] == [
        (call.attempt_log[0][0], False),
        (call.attempt_log[0][0], False),
        (call.attempt_log[2][0], True),
    ]
    assert call.attempt_log[2][0] != call.attempt_log[0][0]


async def test_a_prompt_too_long_goes_to_the_context_window_fallback_only() -> None:
    models = {"m": model(fallbacks=("other",), context_window_fallbacks=("long",))}
    router, *_ = make_router(models)
    call = FakeCall((route("a"),), {"other": (route("o", "other"),), "long": (route("l", "long"),)})
    too_long = error_for_upstream_status(400, "prompt is too long: 300000 tokens > 200000")
    assert isinstance(too_long, ContextWindowExceeded)
    script = Script(a=[too_long], o=["wrong"], l=["long ok"])
    assert await run(router, call, script) == "long ok"
    assert script.calls == ["a", "l"]


async def test_no_fallback_on_the_callers_errors() -> None:
    models = {"m": model(fallbacks=("other",))}
    router, *_ = make_router(models)
    call = FakeCall((route("a"),), {"other": (route("o", "other"),)})
    script = Script(a=[upstream_error(400)], o=["wrong"])
    with pytest.raises(ProviderError):
        await run(router, call, script)
    assert script.calls == ["a"]


def test_an_upstream_key_cooling_down_is_skipped_while_another_is_usable() -> None:
    from gateway.upstream_keys.credentials import WeightedKeys

    _, health, clock, _ = make_router(cooldown_failures=1)
    keys = WeightedKeys.of("p", ("sk-a", "sk-b", "sk-c"), [1, 1, 1])
    health.failed(key_target("p", "sk-a"), "upstream_auth_failed")
    health.failed(key_target("p", "sk-b"), "upstream_auth_failed")
    assert {keys.pick_usable(health) for _ in range(100)} == {"sk-c"}
    health.failed(key_target("p", "sk-c"), "upstream_auth_failed")
    assert len({keys.pick_usable(health) for _ in range(200)}) == 3  # none usable: any
    clock.now += 31
    assert health.usable(key_target("p", "sk-a"))


async def test_the_key_that_got_an_answer_is_remembered_not_one_that_failed() -> None:
    from providers.base import CREDENTIAL_USED

    router, *_ = make_router(backoff_base_seconds=0)

    async def attempt(route: Route) -> str:
        CREDENTIAL_USED.set("sk-good" if route.provider_name == "b" else "sk-bad")
        if route.provider_name == "a":
            raise upstream_error(503)
        return "ok"

    call = FakeCall((route("a", priority=0), route("b", priority=1)))
    assert await run(router, call, attempt) == "ok"
    assert set(router.key_answered_at) == {"sk-good"}
