"""Random ids: request ids, response ids, message ids.

``random_hex()`` is 128 bits from the OS's generator as 32 hex digits, the form of
``uuid.uuid4().hex`` (without its version digits), for a fraction of its cost: the bytes come from
``os.urandom`` 4096 at a time, not one system call per id, and a system call on the event loop
hands the GIL over and waits to get it back. A forked child draws its own bytes, never its
parent's; two threads never take the same slice.

``time_ordered_hex()`` is the same 32 hex digits laid out as UUIDv7 lays them out: the
milliseconds since the epoch first, then 80 random bits. Request ids take it because the ledger
keeps them in a unique index: ids that sort by time land at the index's right edge, a few pages
per batch, where random ones each dirty a page of their own anywhere in it. Measured by
``bench/ledger_ids.py`` (a million rows already in the table, then batches of 800): SQLite wrote
10.9 KiB per row with random ids and 0.8 KiB with these (20.7 and 2.9 us of CPU per row);
PostgreSQL wrote 1.86 and 0.57 KiB of WAL per row.
"""

from __future__ import annotations

import os
import threading
import time

_BATCH_BYTES = 4096
_ID_BYTES = 16
_TIME_DIGITS = 12  # 48 bits of milliseconds: until the year 10889
_RANDOM_BYTES = (2 * _ID_BYTES - _TIME_DIGITS) // 2  # 80 bits

_lock = threading.Lock()
_pool = b""
_taken = 0


def _random_bytes(count: int) -> bytes:
    global _pool, _taken
    with _lock:
        if _taken + count > len(_pool):
            _pool, _taken = os.urandom(_BATCH_BYTES), 0
        start = _taken
        _taken += count
        return _pool[start:_taken]


def random_hex() -> str:
    return _random_bytes(_ID_BYTES).hex()


def time_ordered_hex() -> str:
    """32 hex digits: the time in milliseconds (12), then 80 random bits (20). Ids made in
    different milliseconds sort in the order they were made; ids of one millisecond, in any
    order."""
    return f"{time.time_ns() // 1_000_000:0{_TIME_DIGITS}x}" + _random_bytes(_RANDOM_BYTES).hex()


def _forget_in_child() -> None:
    global _lock, _pool, _taken
    _lock, _pool, _taken = threading.Lock(), b"", 0


os.register_at_fork(after_in_child=_forget_in_child)
