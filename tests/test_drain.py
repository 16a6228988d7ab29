"""The stopping worker's grace (gateway.drain): the server's signal handler still runs, and the
requests still running at the deadline are cancelled, once. End to end under both servers:
test_e2e_chat_ledger.py's shutdown tests."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from gateway.drain import STOP_SIGNALS, Drain


@pytest.fixture
def restored_signals() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


async def test_a_stop_signal_reaches_the_server_and_starts_the_grace(
    restored_signals: None,
) -> None:
    server_saw: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:
        server_saw.append(signum)

    signal.signal(signal.SIGTERM, server_handler)
    drain = Drain()
    drain.watch_signals(grace=0.05)
    drain.watch_signals(grace=0.05)  # once per process: a second call chains nothing more
    request = asyncio.create_task(asyncio.sleep(30))
    drain.track(request)

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.01)
    assert server_saw == [signal.SIGTERM]
    assert not drain.cutting and not request.done()  # the grace runs

    await asyncio.sleep(0.1)
    assert drain.cutting
    assert request.cancelled()
    assert drain.requests == set()


async def test_a_signal_the_server_does_not_handle_is_left_alone(restored_signals: None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Drain().watch_signals(grace=1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_requests_that_end_within_the_grace_are_not_cut() -> None:
    drain = Drain()
    quick = asyncio.create_task(asyncio.sleep(0.01))
    drain.track(quick)
    drain.begin(grace=0.05)
    drain.begin(grace=0)  # a second signal does not move the deadline
    await asyncio.sleep(0.02)
    assert quick.done() and not quick.cancelled()
    assert drain.requests == set()
    await asyncio.sleep(0.05)
    assert not drain.cutting  # nothing was left to cut


async def test_a_request_started_during_the_grace_is_cut_too() -> None:
    drain = Drain()
    drain.begin(grace=0.05)
    late = asyncio.create_task(asyncio.sleep(30))  # on a connection kept alive
    drain.track(late)
    await asyncio.sleep(0.1)
    assert late.cancelled() and drain.cutting


def test_a_signal_after_the_loop_has_closed_still_reaches_the_server(
    restored_signals: None,
) -> None:
    server_saw: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: server_saw.append(signum))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_watch(Drain()))
    loop.close()
    os.kill(os.getpid(), signal.SIGTERM)
    assert server_saw == [signal.SIGTERM]


async def _watch(drain: Drain) -> None:
    drain.watch_signals(grace=1)


async def test_a_request_that_arrives_after_the_cut_is_cut_at_once() -> None:
    """Not left to run into the server's kill, where an unrecorded call would lose its row."""
    drain = Drain()
    drain.track(asyncio.create_task(asyncio.sleep(30)))
    drain.begin(grace=0)
    await asyncio.sleep(0.01)
    assert drain.cutting
    late = asyncio.create_task(asyncio.sleep(30))  # on a connection kept alive
    drain.track(late)
    await asyncio.sleep(0)
    assert late.cancelled()


async def test_an_answered_request_is_not_cut_though_its_task_lives_on() -> None:
    """The server's task may serve the connection's next request: once its request is answered
    (``untrack``), a cut leaves it alone."""
    drain = Drain()
    connection = asyncio.create_task(asyncio.sleep(30))
    drain.track(connection)
    drain.untrack(connection)
    assert drain.requests == set()
    drain.begin(grace=0)
    await asyncio.sleep(0.01)
    assert not connection.cancelled()
    connection.cancel()
