"""The worker's gate: how many calls may do the gateway's own work at once, and in what order
the others wait (issue #17: fair saturation).

A saturated worker used to interleave every call it had accepted: each new arrival shared the
CPU with all the others, and some callers waited many times longer than the median. The gate
lets at most ``limit`` calls run their gateway work at a time; the others wait in two queues:

- **continuing**: calls whose upstream has answered, back for the rest of their work: they go
  first, so that work already begun finishes (its caller is waiting for it, and its upstream
  connection is free again);
- **arrivals**: new calls, in the order they arrived (FIFO): no caller is overtaken, none starves.

A call holds its place only while the gateway works for it, never while it waits on an upstream
(``Call.upstream`` leaves the gate and comes back), and never during a stream's relay: a worker
still serves thousands of slow upstream calls at once. Uncontended, entering is a comparison and
an addition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Gate:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        """At most this many calls work at once; 0: no gate."""
        self.active = 0
        self._continuing: deque[asyncio.Future[None]] = deque()
        self._arrivals: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._continuing) + len(self._arrivals)

    async def enter(self, continuing: bool = False) -> None:
        if self.limit <= 0:
            return
        if self.active < self.limit and not (self._continuing or self._arrivals):
            self.active += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._continuing if continuing else self._arrivals).append(waiter)
        try:
            await waiter  # ``leave`` hands its place over: ``active`` stays counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a place just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):  # ``leave`` may have dropped it already
                    (self._continuing if continuing else self._arrivals).remove(waiter)
            raise

    def leave(self) -> None:
        if self.limit <= 0:
            return
        for queue in (self._continuing, self._arrivals):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the place passes on; ``active`` is unchanged
                    return
        self.active -= 1
