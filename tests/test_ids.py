"""Random ids (``providers.ids``): never the same twice, in threads or in forked workers; request
ids in the order they were made."""

from __future__ import annotations

import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from providers.ids import random_hex, time_ordered_hex


def test_ids_are_32_hex_digits_and_never_repeat_across_batches() -> None:
    ids = [random_hex() for _ in range(2000)]  # several 4096-byte batches
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_threads_never_take_the_same_slice() -> None:
    """Ids taken by 8 threads at once are all distinct. Not a proof of the lock: without it the
    race (two threads between reading and moving the offset) did not show in 3 runs of this."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes, as under load
    try:
        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(lambda _: [random_hex() for _ in range(5000)], range(8)))
    finally:
        sys.setswitchinterval(switch)
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 40_000


def test_a_forked_child_draws_its_own_ids_not_its_parents() -> None:
    random_hex()  # the parent holds a batch with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(random_hex() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(random_hex() for _ in range(4))
    assert len(child) == 128
    assert child != parent  # without the reset, the child would repeat the parent's next four


def test_time_ordered_ids_start_with_the_millisecond_and_sort_by_it() -> None:
    before = time.time_ns() // 1_000_000
    ids = []
    for _ in range(5):
        ids += [time_ordered_hex() for _ in range(400)]
        time.sleep(0.002)
    after = time.time_ns() // 1_000_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    stamps = [int(i[:12], 16) for i in ids]
    assert before <= stamps[0] and stamps[-1] <= after
    assert stamps == sorted(stamps), "made in order, so sorted by their milliseconds"
    assert len(set(stamps)) >= 5
    millisecond = [i for i, stamp in zip(ids, stamps, strict=True) if stamp == stamps[0]]
    assert len({i[12:] for i in millisecond}) == len(millisecond), "80 random bits after it"
