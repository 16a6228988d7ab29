"""Outages of the services the gateway leans on (PostgreSQL, Redis): noticing them, backing off,
and saying so in the log once per interval.

Why: a database outage used to cost every call a connection attempt and two tracebacks (34.6 MB
of log in 17 s). An ``Outage`` remembers that a service is down, lets one call per
``probe_seconds`` try it again (the others do without it at once), and logs the first failure,
then at most one line per ``TOLLGATE_OUTAGE_LOG_SECONDS`` with how many failures it did not log,
and one line when the service is back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from providers.errors import ServiceUnavailable

log = logging.getLogger("tollgate.outage")

T = TypeVar("T")

DATABASE_DOWN_ERRORS = (OperationalError, InterfaceError)
"""What a database that cannot be reached raises (a bug in a query raises something else)."""


class Outage:
    """Whether one service is known to be down, when to try it next, and its log lines."""

    def __init__(self, name: str, probe_seconds: float = 1.0) -> None:
        self.name = name
        self.probe_seconds = probe_seconds
        self.down_since: float | None = None
        self._retry_at = 0.0
        self._failures = 0  # since the service went down
        self._unlogged = 0  # failures since the last line
        self._logged_at = -math.inf

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def should_try(self) -> bool:
        """Up: yes. Down: yes for one caller per ``probe_seconds`` (that caller probes), no for
        the others, who then do without the service instead of each waiting on it."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self.probe_seconds
        return True

    def retry_after(self) -> int:
        """Whole seconds a client should wait before trying again (at least 1)."""
        return max(math.ceil(self._retry_at - time.monotonic()), 1)

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        self._retry_at = now + self.probe_seconds
        self._failures += 1
        self._unlogged += 1
        if now - self._logged_at >= settings.TOLLGATE_OUTAGE_LOG_SECONDS:
            others = self._unlogged - 1
            log.error(
                "%s unavailable (%s: %s)%s",
                self.name,
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "no message",
                f"; {others:,} more failures since the last report" if others else "",
            )
            self._logged_at, self._unlogged = now, 0

    def recovered(self) -> None:
        if self.down_since is None:
            return
        log.warning(
            "%s available again after %.1f s (%d failures, %d of them not logged)",
            self.name,
            time.monotonic() - self.down_since,
            self._failures,
            self._unlogged,
        )
        self.down_since = None
        self._failures = self._unlogged = 0
        self._logged_at = -math.inf


database_outage = Outage("database")
"""The process's view of its database (a registry of one: every reader shares it)."""


async def read_database(query: Callable[[], T], what: str) -> T:
    """Run ``query`` (sync, on the API's shared thread) or raise ``ServiceUnavailable`` when the
    database cannot be reached, trying it at most once per second while it is down. ``what``
    names what could not be read, for the client's message."""
    if not database_outage.should_try():
        raise _unavailable(what)
    try:
        result = await sync_to_async(_fresh_connection_then, thread_sensitive=True)(query)
    except DATABASE_DOWN_ERRORS as exc:
        database_outage.failed(exc)
        raise _unavailable(what) from exc
    database_outage.recovered()
    return result


def _fresh_connection_then(query: Callable[[], T]) -> T:
    # The API skips Django's per-request connection housekeeping (gateway.api.handler): do it here,
    # in the thread that owns the connection, right before using it. It also drops a
    # connection that broke in an outage, so the next try connects afresh.
    close_old_connections()
    return query()


def _unavailable(what: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The gateway cannot read {what} now: its database is unavailable. Try again shortly.",
        retry_after=database_outage.retry_after(),
    )
