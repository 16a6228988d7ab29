"""Instructions per call: ``.venv/bin/python -m bench.instructions`` (valgrind's callgrind).

``bench.inprocess`` runs twice under callgrind, with ``--calls`` and ``3 * --calls`` chat
completions at concurrency 1 (each after a warm-up of as many); the difference of the two runs'
counts, over the calls between them, is what one call costs, start-up and warm-up cancelled out.
The event loop's thread is reported apart from the others (the ledger writer's, mostly).

Why: on this project's machines req/s and CPU time per call move by 10-30% from one minute to
the next, so a change worth 2% cannot be seen in ``make bench``, nor in ``bench.inprocess``'s CPU
time. Instructions do not depend on what else the machine does: the same code gives the same
count within about 1% (issue #17, ninth pass: 1,803,889 and 1,800,350 for one version,
1,404,947 and 1,416,282 for another), so a difference under 2% is not shown. They are not
time (a cache miss costs more than an add), and they leave out the server (uvicorn) and the
kernel: the tool for comparing two versions of the gateway's own code, not a target. Both runs
go in parallel, about a minute and a half on two cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from bench.inprocess import WARM_UP_MAX

ROOT = Path(__file__).resolve().parent.parent
LOOP_THREAD = 1
"""callgrind numbers a process's threads from 1, in the order they start: the main thread,
which runs the event loop, is 1."""


def thread_totals(files: Iterable[Path]) -> dict[int, int]:
    """Instructions per thread, from callgrind's ``--separate-threads=yes`` output files (one
    per thread, named ``<out>-<thread>``, each with a ``summary:`` line)."""
    totals: dict[int, int] = {}
    for path in files:
        thread = int(path.name.rsplit("-", 1)[1])
        with path.open() as lines:
            for line in lines:
                if line.startswith("summary:"):
                    totals[thread] = int(line.split()[1])
                    break
    return totals


def per_call(few: dict[int, int], many: dict[int, int], calls: int) -> tuple[float, float]:
    """The loop thread's instructions per call and the other threads', from the totals of a run
    with ``calls`` fewer calls (``few``) and of the longer one (``many``)."""
    threads = set(few) | set(many)
    loop = (many.get(LOOP_THREAD, 0) - few.get(LOOP_THREAD, 0)) / calls
    others = sum(many.get(t, 0) - few.get(t, 0) for t in threads if t != LOOP_THREAD) / calls
    return loop, others


def _total_calls(calls: int) -> int:
    """The calls of a ``bench.inprocess`` run of one round: its warm-up's and the round's."""
    return min(calls, WARM_UP_MAX) + calls


def _callgrind(out: Path, calls: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        *("valgrind", "--tool=callgrind", "--separate-threads=yes", "--dump-instr=no"),
        f"--callgrind-out-file={out}.%p",
        *(sys.executable, "-m", "bench.inprocess", "--calls", str(calls)),
        *("--concurrency", "1", "--rounds", "1"),
    ]
    with log.open("wb") as sink:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=200, help="calls of the shorter run")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tollgate-instructions-") as tmp:
        runs = {n: Path(tmp) / f"n{n}" for n in (args.calls, 3 * args.calls)}
        started = [_callgrind(out, n, out.with_suffix(".log")) for n, out in runs.items()]
        if any(process.wait() != 0 for process in started):
            for out in runs.values():
                print(out.with_suffix(".log").read_text()[-2000:], file=sys.stderr)
            return 1
        few, many = (thread_totals(Path(tmp).glob(f"{out.name}.*-*")) for out in runs.values())
    loop, others = per_call(few, many, _total_calls(3 * args.calls) - _total_calls(args.calls))
    print(f"instructions per call: event loop {loop:,.0f}, other threads {others:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
