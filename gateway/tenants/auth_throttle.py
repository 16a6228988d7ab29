"""Failed authentications, throttled per client address and summarised in the log.

Why: 3,000 random keys at 1,299/s were each a database lookup and a WARNING line. Each address
has a token bucket of failures (``TOLLGATE_AUTH_FAILURE_BURST``, refilled at
``TOLLGATE_AUTH_FAILURE_RATE`` per second); past it, a failure is a 429 with ``Retry-After``,
and a key that the cache cannot vouch for is refused before any database lookup. The log gets
one summary line per ``TOLLGATE_OUTAGE_LOG_SECONDS``. The address is the ASGI scope's client
(uvicorn's ``--proxy-headers`` and ``--forwarded-allow-ips`` make it the real client behind a
proxy). A caller whose key is cached and valid never touches any of this.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict

from django.conf import settings

from providers.errors import GatewayError

log = logging.getLogger("tollgate.auth")

MAX_ADDRESSES = 10_000
"""Addresses tracked at once; the least recently failing is dropped first (bounded memory)."""


class TooManyAuthenticationFailures(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_authentication_failures"
    retryable = True

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "Too many failed authentications from your address. "
            f"Please try again in {retry_after}s."
        )
        self.headers = {"retry-after": str(retry_after)}


class FailureThrottle:
    """A token bucket of failed authentications per client address, in process memory."""

    def __init__(self, burst: int, rate: float, max_addresses: int = MAX_ADDRESSES) -> None:
        self.burst = burst
        self.rate = rate
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, address: str, now: float) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def wait(self, address: str) -> int:
        """Seconds until ``address`` may fail again; 0 when it may now."""
        tokens = self._tokens(address, time.monotonic())
        if tokens >= 1:
            return 0
        return math.ceil((1 - tokens) / self.rate) if self.rate > 0 else 3600

    def fail(self, address: str) -> int:
        """Count a failure: 0 when it was within the allowance, else the seconds to wait."""
        now = time.monotonic()
        tokens = self._tokens(address, now)
        if tokens >= 1:
            tokens -= 1
            waited = 0
        else:
            waited = self.wait(address)
        self._buckets[address] = (tokens, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return waited

    def refund(self, address: str) -> None:
        """Give back a failure charged in advance (the key turned out good)."""
        now = time.monotonic()
        self._buckets[address] = (min(float(self.burst), self._tokens(address, now) + 1), now)

    def clear(self) -> None:
        self._buckets.clear()


class FailureSummary:
    """Failed authentications counted, and logged as one line per interval."""

    MAX_DISTINCT = 10_000  # addresses counted one by one per interval; beyond, "10,000+"

    def __init__(self) -> None:
        self.failures = self.refused = self.lookups = 0
        self.addresses: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None

    def record(self, address: str, refused: bool) -> None:
        self.failures += 1
        self.refused += refused
        if len(self.addresses) < self.MAX_DISTINCT:
            self.addresses.add(address)
        if self._flush is None:
            interval = settings.TOLLGATE_OUTAGE_LOG_SECONDS
            self._flush = asyncio.get_running_loop().call_later(interval, self.flush, interval)

    def looked_up(self) -> None:
        """A failure that cost a database lookup (an unknown prefix, not in the negative cache)."""
        self.lookups += 1

    def flush(self, interval: float) -> None:
        many = "+" if len(self.addresses) >= self.MAX_DISTINCT else ""
        log.warning(
            "authentication failures: %s in the last %g s from %s%s address(es), %s refused "
            "(429), %s looked up in the database",
            f"{self.failures:,}",
            interval,
            f"{len(self.addresses):,}",
            many,
            f"{self.refused:,}",
            f"{self.lookups:,}",
        )
        self.failures = self.refused = self.lookups = 0
        self.addresses.clear()
        self._flush = None


failure_throttle = FailureThrottle(
    settings.TOLLGATE_AUTH_FAILURE_BURST, settings.TOLLGATE_AUTH_FAILURE_RATE
)
"""The process's table of failing addresses (a cache, bounded)."""
failure_summary = FailureSummary()


def charge(address: str) -> TooManyAuthenticationFailures | None:
    """Before a database lookup: the 429 for an address out of allowance, else ``None`` with
    one failure charged in advance (``refund`` it when the key is good). Charging first means
    that concurrent lookups from one address cannot all pass on the same allowance."""
    wait = failure_throttle.fail(address)
    if wait:
        failure_summary.record(address, refused=True)
        return TooManyAuthenticationFailures(wait)
    return None


def refund(address: str) -> None:
    failure_throttle.refund(address)


def failed(address: str, error: GatewayError, charged: bool = False) -> GatewayError:
    """Count a failed authentication: ``error`` (401) within the allowance, else a 429. A
    failure already ``charged`` before its lookup is only counted in the log's summary."""
    wait = 0 if charged else failure_throttle.fail(address)
    failure_summary.record(address, refused=bool(wait))
    return TooManyAuthenticationFailures(wait) if wait else error
