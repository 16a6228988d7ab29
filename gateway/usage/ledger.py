"""The ledger writer: every call's row reaches the ledger exactly once, whatever fails.

A request hands its row to ``LedgerWriter.record``, which cleans it (``ledger_rows.clean_row``:
what the database would refuse, such as a NUL character in a model name, is mended where the row
is built), appends it to the process's journal (``ledger_files``: a write to the page cache,
before the call's answer completes) and queues it. One writer thread per process drains the
queue and inserts the rows in batches (``ledger_rows.insert_rows``), one batch at most every
``flush_seconds`` or every ``batch_size`` rows, adding them to the daily rollup (``rollup.py``)
in the same transaction.

What can go wrong, and what happens then:

- **The database refuses a row** (a value no cleaning foresaw, a tenant deleted meanwhile): the
  batch is split in halves until the row is alone, every other row lands, and the row goes to
  ``LedgerDeadLetter`` with the database's reason, for an operator to see in the admin.
- **The database is down**: after ``retries`` attempts the rows go to a spool file, fsynced; the
  writer probes the database every ``replay_seconds`` and replays the spool as soon as it answers,
  while the gateway keeps serving.
- **The process is killed** (SIGKILL, the OOM killer): its journal is left unclaimed, and any
  writer (a sibling worker, or the next start) replays it.
- **A replay is cut short, or happens twice**: inserts skip request ids already in the ledger
  (``INSERT ... ON CONFLICT (request_id) DO NOTHING``; a batch that skipped one is inserted
  again with ``RETURNING``) and only what landed is added to the rollup, so nothing is counted
  twice.

``stop`` writes what is queued and deletes the journal; the ASGI lifespan calls it on shutdown,
and an ``atexit`` hook does for processes that have no lifespan.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.db import connection

from gateway.models import LedgerDeadLetter
from gateway.outage import DATABASE_DOWN_ERRORS, Outage
from gateway.usage.ledger_files import Claim, HeldFile, Row, adopt, encode, unclaimed
from gateway.usage.ledger_rows import as_text, clean_row, insert_rows

log = logging.getLogger("tollgate.ledger")

__all__ = ["LedgerWriter", "Row", "database_answers"]

_STOP = object()


@dataclass(frozen=True, slots=True)
class _Retire:
    """Queued behind the last row of a journal segment: when the writer reaches it, every row
    of the segment is in the ledger (or the spool), and the segment can go."""

    segment: HeldFile


class DatabaseUnavailable(Exception):
    """The database did not answer: rows wait in the spool, none is blamed."""


class LedgerObserver(Protocol):
    """Told, in the writer thread, of what the writer did (``gateway.telemetry.metrics``)."""

    def batch_written(self, seconds: float) -> None:
        """A batch landed in the database, taking ``seconds`` (its retries included)."""

    def dead_lettered(self) -> None:
        """A row the database refused went to the dead letter."""


class LedgerWriter:
    def __init__(
        self,
        directory: Path,
        flush_seconds: float = 0.5,
        batch_size: int = 500,
        retries: int = 3,
        autostart: bool = True,
        *,
        journal: bool = True,
        fsync: bool = True,
        replay_seconds: float = 2.0,
        segment_bytes: int = 8 * 1024 * 1024,
        segment_seconds: float = 60.0,
        legacy_spools: Iterable[Path] = (),
    ) -> None:
        self.directory = Path(directory)
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.retries = retries
        self.autostart = autostart
        self.journal = journal
        self.fsync = fsync
        self.replay_seconds = replay_seconds
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.legacy_spools = list(legacy_spools)
        self._queue: queue.SimpleQueue[Row | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._order = threading.Lock()  # a row's journal line and its place in the queue agree
        self._backoff = threading.Event()  # never set: its wait() is an interruptible sleep
        self._stopping = threading.Event()  # cuts short the wait while a batch gathers
        self._segment: HeldFile | None = None
        self._spool: HeldFile | None = None  # set while the database is down
        self._replaying: Claim | None = None
        self._replay_at = 0.0
        self._unsaved = False  # a row since the last retired segment is only in the journal
        self._database = Outage("database (ledger writer)")  # one log line per interval
        self._disk = Outage(f"ledger directory {self.directory}")
        self._spooled_rows = 0
        self.observer: LedgerObserver | None = None

    # --- request side ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (``/readyz``)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Rows queued and not yet written (approximate: ``/readyz``)."""
        return self._queue.qsize()

    @property
    def spooled_rows(self) -> int:
        """Rows this writer spooled since the database went away (0 once it answers again and
        the spool is handed to the replay)."""
        return self._spooled_rows

    @property
    def database_outage(self) -> Outage:
        """Whether the writer finds the database down (the metrics' ``tollgate_service_up``)."""
        return self._database

    def record(self, row: Row) -> None:
        """Journal and queue one row. Never blocks on the database; a failing disk costs the
        crash guarantee (logged), never the call."""
        row = clean_row(row)
        line = encode(row) if self.journal else b""
        with self._order:
            if line:
                self._journal(line)
            self._queue.put(row)
        if self._thread is None and self.autostart:
            self.start()

    def _journal(self, line: bytes) -> None:
        try:
            if self._segment is None:
                self._segment = HeldFile(self.directory, "journal")
            self._segment.append(line)
        except OSError as error:  # a crash now would lose the rows still queued
            self._disk.failed(error)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()
            atexit.register(self.stop)

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer thread and let go of its files."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            self._stopping.set()
            thread.join(timeout)
        self.flush()
        with self._order:
            segment, self._segment = self._segment, None
        if segment is not None:
            self._retire(segment)
        for held in (self._replaying, self._spool):
            if held is not None:
                held.release()
        self._replaying = self._spool = None

    def flush(self) -> int:
        """Write every queued row now, in the calling thread. Returns how many were written."""
        written = 0
        while items := self._drain():  # writing may queue a retired segment: until none is left
            written += self._handle(items)[0]
        return written

    def _drain(self) -> list[object]:
        items: list[object] = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._queue.get_nowait())
        return items

    # --- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self._guarded(lambda: adopt(self.legacy_spools, self.directory))
        try:
            while True:
                self._guarded(self._replay_some)
                items = self._take()
                _, stopping = self._handle(items)
                if stopping:
                    break
                self._guarded(self._rotate)
        finally:
            connection.close()

    def _guarded(self, step: Callable[[], object]) -> None:
        """Run a housekeeping step (replay, rotation) whose failure, a disk fault or a file it
        cannot read, must not stop the thread that writes everyone's rows: it is logged (once per
        interval) and tried again on the next round."""
        try:
            step()
        except Exception as error:
            self._disk.failed(error)

    def _take(self) -> list[object]:
        """The next batch: the rows queued ``flush_seconds`` after the first, up to
        ``batch_size``, cut short by a retired segment or the stop sign. Empty when nothing came
        before the next replay is due.

        While the batch gathers, the thread sleeps rather than wait on the queue: a waiting
        thread would be woken by every row, and each wake-up takes the GIL from the event loop
        that queued it (a hand-off that costs the loop far more than the row's own work). So the
        thread wakes once per batch, or at once when its backlog is already a full batch."""
        wait = min(max(self._replay_at - time.monotonic(), 0.05), self.replay_seconds)
        try:
            first = self._queue.get(timeout=wait)
        except queue.Empty:
            return []
        if (
            first is not _STOP
            and not isinstance(first, _Retire)
            and self._queue.qsize() < self.batch_size
        ):
            self._stopping.wait(self.flush_seconds)
        items = [first]
        with contextlib.suppress(queue.Empty):
            while (
                len(items) < self.batch_size
                and items[-1] is not _STOP
                and not isinstance(items[-1], _Retire)
            ):
                items.append(self._queue.get_nowait())
        return items

    def _handle(self, items: list[object]) -> tuple[int, bool]:
        """Write the rows among ``items``, retiring journal segments in order. Returns how many
        rows, and whether the stop sign was among them."""
        rows: list[Row] = []
        written, stopping = 0, False
        for item in items:
            if item is _STOP:
                stopping = True
            elif isinstance(item, _Retire):
                written += self._write(rows)
                rows = []
                self._retire(item.segment)
            else:
                rows.append(item)  # type: ignore[arg-type]
        return written + self._write(rows), stopping

    def _write(self, rows: list[Row]) -> int:
        """Put ``rows`` in the ledger, the dead letter or, with the database down, the spool."""
        if not rows:
            return 0
        if self.fsync:
            self._sync_journal()  # a machine crash loses at most one flush interval
        if self._spool is None:
            try:
                self._land_retrying(rows)
                return len(rows)
            except DatabaseUnavailable as error:
                self._database.failed(error)
        self._to_spool(rows)
        return len(rows)

    def _land_retrying(self, rows: list[Row]) -> None:
        started = time.perf_counter()
        for attempt in range(1, self.retries + 1):
            try:
                self._land(rows)
            except DatabaseUnavailable:
                if attempt == self.retries:
                    raise
                self._backoff.wait(0.2 * attempt)  # a plain sleep, in the writer thread
                continue
            if self.observer is not None:
                self.observer.batch_written(time.perf_counter() - started)
            return

    def _land(self, rows: list[Row]) -> None:
        """Insert ``rows``; when the database refuses the batch but answers, split it until the
        row it refuses is alone, and put that row in the dead letter."""
        try:
            insert_rows(rows)
            return
        except DATABASE_DOWN_ERRORS as error:
            connection.close()
            raise DatabaseUnavailable(str(error).strip()) from error
        except Exception as error:  # a value refused, by the database or by a field
            if not database_answers():
                raise DatabaseUnavailable(str(error).strip()) from error
            if len(rows) == 1:
                self._dead_letter(rows[0], error)
                return
        half = len(rows) // 2
        self._land(rows[:half])
        self._land(rows[half:])

    def _dead_letter(self, row: Row, error: Exception) -> None:
        request_id = str(row.get("request_id") or "")[:64]
        tenant_id = row.get("tenant_id")
        reason = f"{type(error).__name__}: {error}".strip()[:4000]
        try:
            if (
                not request_id
                or not LedgerDeadLetter.objects.filter(request_id=request_id).exists()
            ):
                LedgerDeadLetter.objects.create(
                    request_id=request_id,
                    tenant_id=tenant_id if isinstance(tenant_id, int) else None,
                    reason=reason,
                    row=as_text(row),
                )
        except Exception as dead:
            raise DatabaseUnavailable(f"the dead letter failed too: {dead}") from dead
        if self.observer is not None:
            self.observer.dead_lettered()
        log.error(
            "ledger: the database refused row %s (%s); it is in the dead letter", request_id, reason
        )

    def _to_spool(self, rows: list[Row]) -> None:
        try:
            if self._spool is None:
                self._spool = HeldFile(self.directory, "spool")
                log.warning(
                    "ledger: rows are spooled to %s until the database answers", self._spool.path
                )
            self._spool.append(b"".join(encode(row) for row in rows))
            self._spool.sync()
            self._spooled_rows += len(rows)
        except OSError as error:
            # The journal still has these rows: its segment is kept for a replay.
            self._unsaved = True
            self._disk.failed(error)

    # --- the journal -------------------------------------------------------------------------

    def _rotate(self, now: bool = False) -> HeldFile | None:
        """Start a new journal segment when the current one has rows and is big or old enough
        (or ``now``); the old one, returned, is retired once the writer reaches its last row."""
        segment = self._segment
        if segment is None or segment.size == 0:
            return None
        if (
            not now
            and segment.size < self.segment_bytes
            and time.monotonic() - segment.opened < (self.segment_seconds)
        ):
            return None
        try:
            fresh = HeldFile(self.directory, "journal")
        except OSError:
            return None
        with self._order:
            old, self._segment = self._segment, fresh
            self._queue.put(_Retire(old))  # type: ignore[arg-type]
        return old

    def _sync_journal(self) -> None:
        """Make the rows journaled so far survive a machine crash: fsync them in a segment that
        nobody writes to any more. Not the live one: a write to a page the kernel is writing back
        waits for it, and that write is the event loop's (measured: +20-34% latency at c1)."""
        old = self._rotate(now=True)
        if old is not None:
            with contextlib.suppress(OSError):
                old.sync()

    def _retire(self, segment: HeldFile) -> None:
        if self._unsaved:  # some of its rows are nowhere else: leave it to a replay
            segment.release()
            self._unsaved = False
        else:
            segment.delete()

    # --- replay ------------------------------------------------------------------------------

    def _replay_some(self, batches: int = 20) -> None:
        """Every ``replay_seconds``: if the database is back, release the spool; then replay up
        to ``batches`` batches of unclaimed files (this process's spool, dead processes'
        journals, other workers' spools). Comes back at once while there is more."""
        now = time.monotonic()
        if now < self._replay_at:
            return
        self._replay_at = now + self.replay_seconds
        if self._spool is not None:
            if not database_answers():
                return
            self._database.recovered()
            self._spool.release()
            self._spool = None
            self._spooled_rows = 0
        for _ in range(batches):
            claim = self._replaying or next(unclaimed(self.directory), None)
            if claim is None:
                return
            self._replaying = claim
            rows = [clean_row(row) for row in claim.rows(self.batch_size)]
            if not rows:
                log.info("ledger: replayed %s", claim.path.name)
                if claim.torn:
                    log.warning("ledger: %d torn lines in %s", claim.torn, claim.path.name)
                claim.done()
                self._replaying = None
                continue
            try:
                self._land(rows)
            except DatabaseUnavailable as error:
                self._database.failed(error)  # the replay resumes when it answers
                claim.release()
                self._replaying = None
                return
        self._replay_at = now  # more to do: come back after the next batch of live rows

    def replay(self) -> int:
        """Replay every unclaimed file now, in the calling thread (tests, tools). Returns how
        many rows were read."""
        count = 0
        while True:
            claim = next(unclaimed(self.directory), None)
            if claim is None:
                return count
            while rows := claim.rows(self.batch_size):
                count += len(rows)
                self._land([clean_row(row) for row in rows])
            claim.done()


def database_answers() -> bool:
    """Whether the database takes a query now (on a fresh connection if this one broke)."""
    for _ in range(2):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except Exception:
            with contextlib.suppress(Exception):
                connection.close()
    return False
