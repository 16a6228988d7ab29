"""Random ids: request ids, response ids, message ids.

``random_hex()`` is 128 bits from the OS's generator as 32 hex digits, the form of
``uuid.uuid4().hex`` (without its version digits), for a fraction of its cost: the bytes come from
``os.urandom`` 4096 at a time, not one system call per id, and a system call on the event loop
hands the GIL over and waits to get it back. A forked child draws its own bytes, never its
parent's; two threads never take the same slice.
"""

from __future__ import annotations

import os
import threading

_BATCH_BYTES = 4096
_ID_BYTES = 16

_lock = threading.Lock()
_pool = b""
_taken = 0


def random_hex() -> str:
    global _pool, _taken
    with _lock:
        if _taken >= len(_pool):
            _pool, _taken = os.urandom(_BATCH_BYTES), 0
        start = _taken
        _taken += _ID_BYTES
        return _pool[start:_taken].hex()


def _forget_in_child() -> None:
    global _lock, _pool, _taken
    _lock, _pool, _taken = threading.Lock(), b"", 0


os.register_at_fork(after_in_child=_forget_in_child)
