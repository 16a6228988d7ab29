"""Stopping a worker without losing a call's row: the requests in flight, and a deadline for them.

Told to stop (SIGTERM, or SIGINT), a server stops taking connections and waits for the requests
under way. uvicorn cuts the ones still running when ``--timeout-graceful-shutdown`` runs out by
cancelling them, which records them; granian's ``--workers-kill-timeout`` SIGKILLs the worker
instead, and a call not recorded by then (a long stream) would leave no row. So the gateway keeps
its own deadline: TOLLGATE_SHUTDOWN_GRACE_SECONDS after the signal, every request still running is
cancelled. Its call is recorded as cut by the shutdown (503 ``server_shutdown``, with the tokens
streamed so far), its connection is closed without ending the body (the client sees a cut answer,
not a short one), and the server's own drain then ends and the lifespan shutdown writes the
queued rows. A request that still arrives after the cut (on a connection kept alive) is cut
at once. The grace must be shorter than the server's own limit (docs/deploy.md).

The gateway learns of the signal by chaining its handler in front of the server's (the handler
the server installed stays in charge of stopping the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger("tollgate")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """The process's requests in flight; cancels those still running a grace after a stop."""

    def __init__(self) -> None:
        self.requests: set[asyncio.Task[Any]] = set()
        self.cutting = False
        """Set just before the requests left at the deadline are cancelled: their calls record
        ``server_shutdown`` instead of a client's disconnect."""
        self._deadline: asyncio.TimerHandle | None = None
        self._watching = False

    def track(self, request: asyncio.Task[Any]) -> None:
        """``request`` is the task of a request under way, until ``untrack`` (or its end)."""
        self.requests.add(request)
        request.add_done_callback(self.requests.discard)
        if self.cutting:  # past the grace (a kept-alive connection): cut at once, not killed later
            request.cancel()

    def untrack(self, request: asyncio.Task[Any]) -> None:
        """The request is answered; its task (the server's) may live on, for the next request of
        its connection."""
        self.requests.discard(request)
        request.remove_done_callback(self.requests.discard)

    def watch_signals(self, grace: float) -> None:
        """Start the grace when the process is told to stop. Called once the server has installed
        its own handlers (the ASGI lifespan startup); a signal the server does not handle is left
        alone, as is a process whose event loop is not on the main thread (no signal reaches it)."""
        if self._watching or threading.current_thread() is not threading.main_thread():
            return
        self._watching = True
        loop = asyncio.get_running_loop()
        for number in STOP_SIGNALS:
            server_handler = signal.getsignal(number)
            if not callable(server_handler):
                continue

            def on_stop(signum: int, frame: FrameType | None, server_handler: Any = server_handler):
                with contextlib.suppress(RuntimeError):  # the loop has closed: nothing in flight
                    loop.call_soon_threadsafe(self.begin, grace)
                server_handler(signum, frame)

            signal.signal(number, on_stop)

    def begin(self, grace: float) -> None:
        """The process is stopping: cut what is still running ``grace`` seconds from now."""
        if self._deadline is not None:
            return
        if self.requests:
            log.info(
                "stopping: %d request(s) in flight, cut in %g s if still running",
                len(self.requests),
                grace,
            )
        self._deadline = asyncio.get_running_loop().call_later(grace, self.cut)

    def cut(self) -> None:
        if not self.requests:
            return
        log.warning(
            "cutting %d request(s) still running at the end of the shutdown grace; their calls "
            "are recorded as server_shutdown",
            len(self.requests),
        )
        self.cutting = True
        for request in list(self.requests):
            request.cancel()
