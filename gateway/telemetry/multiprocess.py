"""The directory where the workers of one gateway keep their metric values (prometheus_client's
multi-process mode, ``gateway.telemetry.metrics``): who empties it, and whose gauges leave it.

Each process holds the directory with a shared ``flock`` on its ``lock`` file for as long as it
lives (the kernel drops the lock with the process, however it ends). A process that finds no
other holder is the first of a new run: what the directory holds is a previous run's, and it
empties it before writing anything. Workers started while others run (uvicorn restarting one)
find the lock held and keep every file: counters never go back while the gateway runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

LOCK_FILE = "lock"


def claim(directory: Path) -> int:
    """Hold ``directory`` for this process, emptied first if nobody else holds it. Returns the
    lock's file descriptor: closing it lets the directory go (``leave``)."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # other processes of this run: their values stay
    else:
        for path in directory.glob("*.db"):
            path.unlink(missing_ok=True)
    # A first process that has not yet converted its lock holds off the others' shared locks
    # here until it has emptied the directory.
    fcntl.flock(lock, fcntl.LOCK_SH)
    return lock


def leave(directory: Path, lock: int) -> None:
    """This process's gauges leave the sums (its counters and histograms stay: they are the
    run's); then the directory is let go."""
    mark_process_dead(os.getpid(), str(directory))
    os.close(lock)


def forget_dead_workers(directory: Path) -> None:
    """Drop the gauges of processes that died without ``leave`` (killed), before a scrape."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
