"""``bench/routing.py`` runs as ``make bench`` runs it, and as its docstring says, a script of its
own: the tenth pass's lazy import of ``bench.processes`` in the fake upstream left the script
unable to start its upstreams, and ``make bench`` failed at its last step unnoticed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("how", [["bench/routing.py"], ["-m", "bench.routing"]])
def test_the_routing_bench_runs_a_few_calls_with_no_error_a_retry_could_avoid(
    how: list[str],
) -> None:
    run = subprocess.run(
        [sys.executable, *how, "--calls", "200", "--concurrency", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "client errors that a retry could have avoided: 0 (target 0)" in run.stdout
