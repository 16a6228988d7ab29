"""What request ids cost the ledger's unique index: random ids against time-ordered ones.

    .venv/bin/python bench/ledger_ids.py [--rows 1000000] [--batches 50] [--batch 800]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/ledger_ids.py

For each kind of id (``providers.ids.random_hex`` and ``time_ordered_hex``, each after ``req_``),
a fresh table shaped like the ledger where it matters (a unique ``request_id``, an index on the
time, a 200-byte payload) is filled with ``--rows`` rows of that kind, then ``--batches`` batches
of ``--batch`` rows are inserted as the ledger writer does, one transaction each. Printed per
inserted row: the bytes written (SQLite: what the process wrote, its WAL mostly; PostgreSQL:
the WAL it generated) and the time taken (SQLite, in process: CPU and wall; PostgreSQL: wall).

SQLite runs in a temporary directory. With ``DATABASE_URL`` set, PostgreSQL runs too, in a table
``bench_ledger_ids`` of that database, dropped afterwards. Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.ids import random_hex, time_ordered_hex

KINDS: dict[str, Callable[[], str]] = {"random": random_hex, "time-ordered": time_ordered_hex}
TABLE = "bench_ledger_ids"
PAYLOAD = "x" * 200


def rows(count: int, make_id: Callable[[], str]) -> list[tuple[str, float, str]]:
    return [("req_" + make_id(), time.time(), PAYLOAD) for _ in range(count)]


def written_bytes() -> int:
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("wchar:")).split()[1])


def sqlite(args: argparse.Namespace, kind: str, directory: Path) -> str:
    path = directory / f"{kind}.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # as the gateway's SQLite
    db.execute(
        f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, request_id TEXT UNIQUE, "
        "created_at REAL, payload TEXT)"
    )
    db.execute(f"CREATE INDEX {TABLE}_time ON {TABLE} (created_at)")
    insert = f"INSERT INTO {TABLE} (request_id, created_at, payload) VALUES (?, ?, ?)"
    db.execute("BEGIN")
    for _ in range(0, args.rows, 10_000):
        db.executemany(insert, rows(10_000, KINDS[kind]))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    batches = [rows(args.batch, KINDS[kind]) for _ in range(args.batches)]
    written, cpu, wall = written_bytes(), time.thread_time(), time.perf_counter()
    for batch in batches:
        db.execute("BEGIN")
        db.executemany(insert, batch)
        db.execute("COMMIT")
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    written = written_bytes() - written
    db.close()
    n = args.batch * args.batches
    return (
        f"SQLite      {kind:>12}: {written / n / 1024:6.2f} KiB written, "
        f"{cpu * 1e6 / n:6.1f} us CPU, {wall * 1e6 / n:6.1f} us per row"
    )


def postgres(args: argparse.Namespace, kind: str, url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {TABLE}")
        db.execute(
            f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, request_id varchar(64) UNIQUE, "
            "created_at double precision, payload text)"
        )
        db.execute(f"CREATE INDEX {TABLE}_time ON {TABLE} (created_at)")
        try:
            with db.cursor() as cursor:
                copy = f"COPY {TABLE} (request_id, created_at, payload) FROM STDIN"
                with cursor.copy(copy) as rows_in:
                    for row in rows(args.rows, KINDS[kind]):
                        rows_in.write_row(row)
            db.execute("CHECKPOINT")  # full-page writes start afresh, as after any checkpoint
            batches = [rows(args.batch, KINDS[kind]) for _ in range(args.batches)]
            insert = f"INSERT INTO {TABLE} (request_id, created_at, payload) VALUES (%s, %s, %s)"
            lsn = db.execute("SELECT pg_current_wal_lsn()").fetchone()
            wall = time.perf_counter()
            for batch in batches:
                with db.transaction(), db.cursor() as cursor:
                    cursor.executemany(insert, batch)
            wall = time.perf_counter() - wall
            wal = db.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn[0] if lsn else None,)
            ).fetchone()
        finally:
            db.execute(f"DROP TABLE IF EXISTS {TABLE}")
    n = args.batch * args.batches
    wal_bytes = float(wal[0]) if wal else 0.0
    return (
        f"PostgreSQL  {kind:>12}: {wal_bytes / n / 1024:6.2f} KiB of WAL, "
        f"{wall * 1e6 / n:6.1f} us per row"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table first")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch", type=int, default=800, help="rows per batch (transaction)")
    args = parser.parse_args()
    print(f"{args.rows:,} rows first, then {args.batches} batches of {args.batch}; per row:")
    with tempfile.TemporaryDirectory() as directory:
        for kind in KINDS:
            print(sqlite(args, kind, Path(directory)), flush=True)
    url = os.environ.get("DATABASE_URL")
    if url:
        for kind in KINDS:
            print(postgres(args, kind, url), flush=True)


if __name__ == "__main__":
    main()
