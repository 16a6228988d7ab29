"""The bench's worker CPU per call: read from /proc, divided by the calls wrk completed."""

from __future__ import annotations

import os
import time

from bench.processes import cpu_seconds
from bench.report import Results, Row
from bench.wrk import WrkResult


def test_cpu_seconds_counts_what_a_process_burns_and_nothing_for_one_gone() -> None:
    before = cpu_seconds([os.getpid()])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # 0.3 s of this process's CPU
        pass
    used = cpu_seconds([os.getpid()]) - before
    assert 0.25 <= used <= 1.0
    assert cpu_seconds([2**22 + 12345]) == 0  # no such process


def result(requests: int, cpu_s: float | None) -> WrkResult:
    return WrkResult(requests, 4.0, 0, 0, 0, 0, 0, 0, 1.0, 2.0, 3.0, 1.0, 4.0, cpu_s=cpu_s)


def test_cpu_per_call_is_the_median_of_the_rounds_that_measured_it() -> None:
    assert result(2000, 1.2).cpu_us_per_request == 600
    assert result(0, 1.2).cpu_us_per_request is None
    row = Row("gateway", 50, [result(2000, 1.2), result(1000, 1.0), result(4000, None)])
    assert row.cpu_us_per_request == 800  # median of 600 and 1,000; the unmeasured round left out
    assert Row("gateway", 50, [result(10, None)]).cpu_us_per_request is None


def test_twice_the_workers_is_held_to_1_8x_the_gateway_round_by_round() -> None:
    """Issue #17's two workers: the median of each round's own ratio, at c50 and c200; n/a when
    the doubled gateway was not measured."""
    results = Results(meta={})
    for gateway, doubled in ((2000, 3800), (2400, 4200), (1800, 3500)):  # 1.90, 1.75, 1.94
        results.row("gateway", 50).rounds.append(result(gateway, None))
        results.row("gateway-2x", 50).rounds.append(result(doubled, None))
    checks = {check.name: check for check in results.checks()}
    c50 = checks["req/s at c50, twice the workers vs the gateway (median of rounds)"]
    assert (c50.measured, c50.target, c50.passed) == ("1.90x (1.90, 1.75, 1.94)", ">= 1.8x", True)
    c200 = checks["req/s at c200, twice the workers vs the gateway (median of rounds)"]
    assert (c200.measured, c200.passed) == ("n/a", None)
    results.row("gateway", 200).rounds.append(result(2000, None))
    results.row("gateway-2x", 200).rounds.append(result(3400, None))
    c200 = {check.name: check for check in results.checks()}[c200.name]
    assert (c200.measured, c200.passed) == ("1.70x (1.70)", False)
