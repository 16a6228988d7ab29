"""The ledger check: exactly one ``gateway_usagerecord`` row per completed call.

The runner reads the gateway's database directly (sqlite3, or psycopg for PostgreSQL), only ever
with SELECTs. Rows are counted for the benchmark's own key and above a baseline id taken once the
ledger was quiet before the measurement, so rows from warm-ups, earlier measurements or other
users of a shared PostgreSQL database are never counted.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

TABLE = "gateway_usagerecord"
STABLE_SECONDS = 0.7
"""No new row for this long means the writer is done (it flushes every 0.5 s)."""


@dataclass
class LedgerCheck:
    """One measurement's rows compared with what the client saw.

    ``completed`` counts every response the client read (``completed_ok``: those with a 2xx).
    When wrk stops it drops the calls in flight, at most one per connection; the gateway records
    each of those once too: 499 if it saw the disconnect first, 200 if it had already handed the
    answer to the socket (it cannot know that nobody read it). Hence ``exact``: every completed
    2xx call has its 200 row, and the rows beyond the completed calls number 0..concurrency.
    ``strict`` is the narrower reading "200 rows == completed 2xx calls", which holds only when
    nothing was in flight (the sequential stream client) or every straggler was recorded 499.
    """

    label: str
    concurrency: int
    completed: int
    completed_ok: int
    rows_200: int
    rows_other: dict[int, int] = field(default_factory=dict)
    flush_wait_s: float = 0.0

    @property
    def rows_total(self) -> int:
        return self.rows_200 + sum(self.rows_other.values())

    @property
    def extra(self) -> int:
        """Rows beyond the completed calls: the calls wrk abandoned in flight when it stopped."""
        return self.rows_total - self.completed

    @property
    def exact(self) -> bool:
        return self.rows_200 >= self.completed_ok and 0 <= self.extra <= self.concurrency

    @property
    def strict(self) -> bool:
        return self.rows_200 == self.completed_ok and 0 <= self.extra <= self.concurrency

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "completed": self.completed,
            "completed_ok": self.completed_ok,
            "rows_200": self.rows_200,
            "rows_other": {str(k): v for k, v in sorted(self.rows_other.items())},
            "extra": self.extra,
            "exact": self.exact,
            "strict": self.strict,
            "flush_wait_s": round(self.flush_wait_s, 2),
        }


class Ledger:
    """Read-only access to the gateway's ledger for one API key."""

    def __init__(self, database_url: str | None, sqlite_path: Path) -> None:
        self.postgres = bool(database_url)
        self._conn: Any
        if database_url:
            self._conn = psycopg.connect(database_url, autocommit=True)
        else:
            self._conn = sqlite3.connect(sqlite_path, timeout=30, isolation_level=None)
        self.key_id = 0

    @property
    def vendor(self) -> str:
        return "PostgreSQL" if self.postgres else "SQLite"

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        if self.postgres:
            sql = sql.replace("?", "%s")
        cursor = self._conn.execute(sql, params)
        return list(cursor.fetchall())

    def use_key(self, raw_key: str) -> None:
        """Count only the rows of this key (looked up by its 12-character clear prefix)."""
        rows = self._query("SELECT id FROM gateway_apikey WHERE prefix = ?", (raw_key[:12],))
        if not rows:
            raise RuntimeError("the benchmark key is not in gateway_apikey")
        self.key_id = int(rows[0][0])

    def max_id(self) -> int:
        rows = self._query(f"SELECT COALESCE(MAX(id), 0) FROM {TABLE}")
        return int(rows[0][0])

    def statuses(self, after_id: int) -> dict[int, int]:
        """Row count per status code for the benchmark key, above ``after_id``."""
        rows = self._query(
            f"SELECT status_code, COUNT(*) FROM {TABLE} WHERE api_key_id = ? AND id > ? "
            "GROUP BY status_code",
            (self.key_id, after_id),
        )
        return {int(status): int(count) for status, count in rows}

    def settle(
        self, after_id: int, expected: int = 0, max_wait: float = 3.0
    ) -> tuple[dict[int, int], float]:
        """Poll until the row count is at least ``expected`` and stopped changing (or
        ``max_wait`` passed); return the counts per status and how long it took."""
        start = time.monotonic()
        last, last_change = -1, start
        while True:
            counts = self.statuses(after_id)
            total = sum(counts.values())
            now = time.monotonic()
            if total != last:
                last, last_change = total, now
            elif total >= expected and now - last_change >= STABLE_SECONDS:
                return counts, now - start
            if now - start >= max_wait:
                return counts, now - start
            time.sleep(0.1)

    def check(
        self,
        label: str,
        concurrency: int,
        completed: int,
        completed_ok: int,
        after_id: int,
        max_wait: float = 3.0,
    ) -> LedgerCheck:
        """Wait for the writer to flush the measurement's rows, then compare."""
        counts, waited = self.settle(after_id, completed, max_wait)
        rows_200 = counts.pop(200, 0)
        return LedgerCheck(label, concurrency, completed, completed_ok, rows_200, counts, waited)

    def quiet_baseline(self) -> int:
        """The highest row id once the ledger stopped changing: the next measurement's floor."""
        self.settle(self.max_id(), 0, max_wait=2.0)
        return self.max_id()

    def close(self) -> None:
        self._conn.close()
