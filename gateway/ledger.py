"""The ledger writer: usage rows leave the request path through a queue and land in batches.

A request hands its row to ``LedgerWriter.record`` (a non-blocking queue put) and moves on. One
writer thread per process drains the queue and inserts the rows (one ``executemany``), one batch at
most every ``flush_seconds`` or every ``batch_size`` rows. In the same transaction it adds the
batch to the daily rollup (``UsageDaily``): the batch is summed in Python by day (UTC), tenant,
key, model and provider, and upserted with one more ``executemany`` (``rollup.py``). A batch the
database refuses is retried; if it still fails it is appended to a spool file (JSON lines) and
replayed on the next start, so a row is never dropped. ``stop`` flushes what is queued; the ASGI
lifespan calls it on shutdown, and an ``atexit`` hook does for processes that have no lifespan.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from django.db import DatabaseError, close_old_connections, connection, transaction

from gateway.models import UsageRecord
from gateway.rollup import add_to_rollup

log = logging.getLogger("tollgate.ledger")

Row = dict[str, Any]
"""Field values of one ``UsageRecord`` (foreign keys as ``tenant_id`` / ``api_key_id``)."""

_STOP = object()


class LedgerWriter:
    def __init__(
        self,
        spool_path: Path,
        flush_seconds: float = 0.5,
        batch_size: int = 500,
        retries: int = 3,
        autostart: bool = True,
    ) -> None:
        self.spool_path = spool_path
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.retries = retries
        self.autostart = autostart
        self._queue: queue.SimpleQueue[Row | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._backoff = threading.Event()  # never set: its wait() is an interruptible sleep

    # --- request side ------------------------------------------------------------------------

    def record(self, row: Row) -> None:
        """Queue one row. Never blocks, never touches the database."""
        self._queue.put(row)
        if self._thread is None and self.autostart:
            self.start()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
            self._thread.start()
            atexit.register(self.stop)

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)
        self.flush()

    def flush(self) -> int:
        """Write every queued row now, in the calling thread. Returns how many were written."""
        rows: list[Row] = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                if item is not _STOP:
                    rows.append(item)  # type: ignore[arg-type]
        for start in range(0, len(rows), self.batch_size):
            self._write(rows[start : start + self.batch_size])
        return len(rows)

    # --- writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self.replay_spool()
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch: list[Row] = []
            if first is _STOP:
                break
            batch.append(first)  # type: ignore[arg-type]
            deadline = time.monotonic() + self.flush_seconds
            while len(batch) < self.batch_size:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._write(batch)
        connection.close()

    def _write(self, rows: list[Row]) -> None:
        if not rows:
            return
        for attempt in range(1, self.retries + 1):
            try:
                insert_rows(rows)
                return
            except DatabaseError:
                log.warning(
                    "ledger batch of %d rows failed (attempt %d)", len(rows), attempt, exc_info=True
                )
                close_old_connections()
                connection.close()
                self._backoff.wait(0.2 * attempt)  # a plain sleep, in the writer thread
        self._spool(rows)

    # --- spool -------------------------------------------------------------------------------

    def _spool(self, rows: list[Row]) -> None:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_path.open("ab") as spool:
            for row in rows:
                spool.write(orjson.dumps(row, default=_encode) + b"\n")
        log.error(
            "ledger: %d rows spooled to %s; they are replayed on the next start",
            len(rows),
            self.spool_path,
        )

    def replay_spool(self) -> int:
        """Insert rows spooled by an earlier failure. Returns how many were replayed."""
        if not self.spool_path.exists():
            return 0
        replaying = self.spool_path.with_suffix(".replaying")
        self.spool_path.rename(replaying)
        rows = [orjson.loads(line) for line in replaying.read_bytes().splitlines() if line]
        for start in range(0, len(rows), self.batch_size):
            self._write(rows[start : start + self.batch_size])
        replaying.unlink()
        log.info("ledger: replayed %d spooled rows", len(rows))
        return len(rows)


def insert_rows(rows: list[Row]) -> None:
    """One ``executemany`` for a batch: several times cheaper than ``bulk_create``, which builds a
    model instance and compiles the SQL for every row. Values are still adapted by each field,
    so every database backend gets what it expects; missing fields take their defaults."""
    fields = _insert_fields()
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
    params = [
        [
            field.get_db_prep_save(
                row[field.attname] if field.attname in row else field.get_default(), connection
            )
            for field in fields
        ]
        for row in rows
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(sql, params)
        add_to_rollup(cursor, rows)


def _insert_fields() -> list[Any]:
    return [field for field in UsageRecord._meta.concrete_fields if not field.primary_key]


def _encode(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)
