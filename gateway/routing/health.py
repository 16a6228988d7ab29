"""Circuit breakers for deployments and upstream keys.

A target (a deployment ``provider/upstream_model``, or an upstream key ``key:<provider>:<id>``)
is **healthy** until it fails ``cooldown_failures`` times within ``cooldown_window_seconds``;
then it is **cooling down** for ``cooldown_seconds`` (a 429 at once, for the upstream's
``retry-after``). After that it is **half-open**: one call may probe it; its success makes it
healthy again, its failure cools it down anew. Times are wall-clock seconds, so that processes
sharing the state through Redis (``gateway.routing.shared``) agree on them.

Reads are from process memory on every call (no I/O); ``changes`` lists the targets whose
state moved, for ``SharedHealth`` to publish.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from providers.config import RouterConfig

PROBE_SECONDS = 30.0
"""A half-open probe that has not reported back within this time frees its slot for another."""


Failure = tuple[float, str]
"""When, and a tag unique among every process's failures (so that merging counts each once)."""


@dataclass(slots=True)
class Breaker:
    failures: deque[Failure] = field(default_factory=deque)
    cooled_until: float = 0.0
    """0: healthy. Else cooling down until then, and half-open after."""
    last_failure: float = 0.0
    last_error: str = ""
    probing_since: float = 0.0
    changed_at: float = 0.0
    """When ``cooled_until`` last changed: between processes, the latest change wins."""
    reset_at: float = 0.0
    """When a probe last passed: failures before it no longer count."""

    def state(self, now: float) -> str:
        if not self.cooled_until:
            return "healthy"
        if now < self.cooled_until:
            return "cooling"
        return "half-open"


class Health:
    def __init__(self, config: RouterConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.breakers: dict[str, Breaker] = {}
        self.changed: set[str] = set()
        self._origin = uuid.uuid4().hex[:8]
        self._failure_count = 0

    def usable(self, target: str) -> bool:
        """Not cooling down: healthy, or half-open with its probe not taken."""
        breaker = self.breakers.get(target)
        if breaker is None or not breaker.cooled_until:
            return True
        now = self.clock()
        return now >= breaker.cooled_until and now - breaker.probing_since > PROBE_SECONDS

    def claim(self, target: str) -> bool:
        """Take ``target`` for one call: always, when healthy; the probe, when half-open."""
        breaker = self.breakers.get(target)
        if breaker is None or not breaker.cooled_until:
            return True
        if not self.usable(target):
            return False
        breaker.probing_since = self.clock()
        return True

    def last_failure(self, target: str) -> float:
        breaker = self.breakers.get(target)
        return breaker.last_failure if breaker is not None else 0.0

    def failed(self, target: str, error: str, retry_after: float | None = None) -> None:
        """A failure that says the target is unwell (not the caller's fault)."""
        now = self.clock()
        breaker = self.breakers.setdefault(target, Breaker())
        breaker.last_failure, breaker.last_error = now, error
        window = now - self.config.cooldown_window_seconds
        failures = breaker.failures
        self._failure_count += 1
        failures.append((now, f"{self._origin}:{self._failure_count}"))
        while failures and failures[0][0] < window:
            failures.popleft()
        cooled_until = breaker.cooled_until
        if cooled_until and now >= cooled_until:  # the probe failed
            breaker.cooled_until = now + self.config.cooldown_seconds
        elif retry_after is not None and retry_after > 0:  # a 429: as long as the upstream says
            breaker.cooled_until = max(cooled_until, now + retry_after)
        elif len(failures) >= self.config.cooldown_failures:
            breaker.cooled_until = max(cooled_until, now + self.config.cooldown_seconds)
        if breaker.cooled_until != cooled_until:
            breaker.changed_at = now
        breaker.probing_since = 0.0
        self.changed.add(target)

    def succeeded(self, target: str) -> None:
        breaker = self.breakers.get(target)
        if breaker is None:
            return  # the hot path: a healthy target that never failed costs one lookup
        now = self.clock()
        if breaker.cooled_until and now >= breaker.cooled_until:  # the probe passed
            breaker.cooled_until = 0.0
            breaker.failures.clear()
            breaker.probing_since = 0.0
            breaker.changed_at = breaker.reset_at = now
            self.changed.add(target)

    # --- between processes (gateway.routing.shared) ---------------------------------------------

    def export(self, target: str) -> dict[str, object]:
        breaker = self.breakers[target]
        return {
            "failures": list(breaker.failures),
            "cooled_until": breaker.cooled_until,
            "last_failure": breaker.last_failure,
            "last_error": breaker.last_error,
            "changed_at": breaker.changed_at,
            "reset_at": breaker.reset_at,
        }

    def merge(self, target: str, remote: dict[str, Any]) -> None:
        """Fold another process's view of ``target`` into ours: failures add up (once each),
        the latest change of the cooldown wins, a passed probe anywhere clears older failures."""
        now = self.clock()
        breaker = self.breakers.setdefault(target, Breaker())
        breaker.reset_at = max(breaker.reset_at, float(remote.get("reset_at") or 0))
        if float(remote.get("changed_at") or 0) > breaker.changed_at:
            breaker.cooled_until = float(remote.get("cooled_until") or 0)
            breaker.changed_at = float(remote["changed_at"])
            breaker.last_error = str(remote.get("last_error") or breaker.last_error)
        breaker.last_failure = max(breaker.last_failure, float(remote.get("last_failure") or 0))
        floor = max(breaker.reset_at, now - self.config.cooldown_window_seconds)
        merged = dict((tag, at) for at, tag in breaker.failures)
        for at, tag in remote.get("failures") or ():
            merged[str(tag)] = float(at)
        breaker.failures = deque(sorted((at, tag) for tag, at in merged.items() if at > floor))
        if not breaker.cooled_until and len(breaker.failures) >= self.config.cooldown_failures:
            last = breaker.failures[-1][0]
            breaker.cooled_until = last + self.config.cooldown_seconds
            breaker.changed_at = last

    def snapshot(self) -> list[dict[str, object]]:
        """Every target that ever failed, for the admin's health page."""
        now = self.clock()
        window = now - self.config.cooldown_window_seconds
        return [
            {
                "target": target,
                "state": breaker.state(now),
                "cooled_until": breaker.cooled_until or None,
                "recent_failures": sum(1 for at, _ in breaker.failures if at >= window),
                "last_failure": breaker.last_failure or None,
                "last_error": breaker.last_error,
            }
            for target, breaker in sorted(self.breakers.items())
        ]
