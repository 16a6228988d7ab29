"""The ledger's files on local disk: the journal and the spool, in one directory.

``journal-<pid>-<n>.jsonl``
    Every row a process queues, appended before the call's answer completes (a write to the page
    cache: microseconds, and it survives the process). A live process holds its segment with an
    exclusive ``flock``; the writer deletes a segment once every row in it is in the database
    (or the spool). A segment left behind is the work of a process that died before writing it.
``spool-<pid>-<n>.jsonl``
    Rows the database did not take (it was down): written and fsynced by the writer, held with
    ``flock`` while it appends, released when the database answers again.

Any ``*.jsonl`` file nobody holds is **unclaimed**: a dead process's journal, a released spool.
Every writer (every worker process) looks for unclaimed files and replays them; ``Claim`` takes
one with a non-blocking ``flock``, so two writers never replay one file at once, and a writer
that dies mid-replay drops its lock with its life, leaving the file to the next. Inserts skip
rows already in the ledger (by request id), so a file replayed twice, or a row both journaled and
written, is counted once. A file is created under a hidden name, locked, then renamed: nobody can
claim a file its owner has not locked yet.

Lines are JSON (orjson); a line cut short by a kill mid-write was never acknowledged and is
skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("tollgate.ledger")

Row = dict[str, Any]
"""Field values of one ``UsageRecord`` (foreign keys as ``tenant_id`` / ``api_key_id``)."""

_serial = itertools.count()


def encode(row: Row) -> bytes:
    """One row as a JSON line (decimals as strings, datetimes in ISO 8601)."""
    return orjson.dumps(row, default=json_value, option=orjson.OPT_APPEND_NEWLINE)


def json_value(value: object) -> str:
    """What orjson does not encode itself: a decimal, as exact text."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a ledger value")


def _create_locked(directory: Path, kind: str) -> tuple[int, Path]:
    """A new empty file ``<kind>-<pid>-<n>.jsonl``, locked by us before anyone can see it."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{kind}-{os.getpid()}-{time.time_ns()}-{next(_serial)}.jsonl"
    hidden = directory / f".{name}.new"
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = directory / name
    os.rename(hidden, path)
    return fd, path


class HeldFile:
    """A journal segment or spool file this process writes, locked while it is open."""

    def __init__(self, directory: Path, kind: str) -> None:
        self.fd, self.path = _create_locked(directory, kind)
        self.size = 0
        self.opened = time.monotonic()

    def append(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.size += len(data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def release(self) -> None:
        """Close, keeping the file: it becomes unclaimed, for a replay to take."""
        os.close(self.fd)

    def delete(self) -> None:
        """Every row in it is in the ledger: remove it, then let go of the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


class Claim:
    """An unclaimed file taken for replay: its rows are read in batches, then it is deleted."""

    def __init__(self, path: Path, file: IO[bytes]) -> None:
        self.path = path
        self._file = file
        self.torn = 0
        """Lines that were not JSON: a write cut short by a kill, never acknowledged."""

    @classmethod
    def take(cls, path: Path) -> Claim | None:
        """Lock ``path`` if nobody holds it and it is still there; else ``None``."""
        try:
            file = path.open("rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another writer may have replayed and deleted it between our open and our lock.
            if os.stat(path).st_ino == os.fstat(file.fileno()).st_ino:
                return cls(path, file)
        except (BlockingIOError, FileNotFoundError):
            pass
        file.close()
        return None

    def rows(self, limit: int) -> list[Row]:
        """The next ``limit`` rows (fewer at the end of the file)."""
        rows: list[Row] = []
        while len(rows) < limit:
            line = self._file.readline()
            if not line:
                break
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                self.torn += 1
        return rows

    def done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._file.close()

    def release(self) -> None:
        """Give the file back, unfinished (the database went away): a later replay resumes it;
        the rows already written are skipped then."""
        self._file.close()


def unclaimed(directory: Path) -> Iterator[Claim]:
    """Claims on the files of ``directory`` that nobody holds, oldest first."""
    try:
        names = sorted(
            (entry.stat().st_mtime, entry.name)
            for entry in os.scandir(directory)
            if entry.name.endswith(".jsonl") and not entry.name.startswith(".")
        )
    except FileNotFoundError:
        return
    for _, name in names:
        claim = Claim.take(directory / name)
        if claim is not None:
            yield claim


def adopt(legacy: list[Path], directory: Path) -> None:
    """Move spool files of earlier versions (one file, renamed ``.replaying`` while replayed)
    into ``directory``, where they are replayed like any unclaimed file."""
    for path in legacy:
        if path.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / f"spool-legacy-{time.time_ns()}-{next(_serial)}.jsonl"
            os.rename(path, target)
            log.warning("ledger: adopted the old spool file %s as %s", path, target)
