"""The bench's worker CPU per call: read from /proc, divided by the calls wrk completed."""

from __future__ import annotations

import os
import time
from dataclasses import replace

from bench.processes import cpu_seconds, machine_cpu_seconds
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


def result(requests: int, cpu_s: float | None, machine_cpu_s: float | None = None) -> WrkResult:
    return WrkResult(requests, 4.0, 0, 0, 0, 0, 0, 0, 1.0, 2.0, 3.0, 1.0, 4.0, cpu_s, machine_cpu_s)


def test_machine_cpu_seconds_counts_this_process_burning_among_the_rest() -> None:
    before = machine_cpu_seconds()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    used = machine_cpu_seconds() - before
    assert 0.25 <= used <= 0.3 + 2.0 * (os.cpu_count() or 1)  # and whatever else ran meanwhile


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


def test_the_report_tells_what_bounds_twice_the_workers_on_this_machine() -> None:
    """Per round: the ratio, how busy the machine's CPUs were in the doubled run, each gateway's
    CPU per call, the rest of the machine's, and what two cores of their own would give."""
    results = Results(meta={"nproc": 2, "workers": 1})
    for gateway, doubled in ((2000, 3000), (1800, 3000), (2200, 3300)):  # 4 s each
        results.row("gateway", 50).rounds.append(result(4 * gateway, 4.0, 4.8))
        results.row("gateway-2x", 50).rounds.append(result(4 * doubled, 6.6, 7.8))
    scaling = results.scaling(50)
    assert scaling is not None and results.scaling(200) is None
    assert round(scaling["ratio"], 3) == 1.5  # 1.5, 1.667, 1.5
    assert round(scaling["busy"], 3) == 0.975  # 7.8 CPU-s of 2 CPUs x 4 s
    assert round(scaling["gateway_us"]) == 500  # 500, 556, 455
    assert round(scaling["doubled_us"]) == 550  # 550, 550, 500
    assert round(scaling["others_us"]) == 100  # 1.2 CPU-s over 12,000 calls
    assert round(scaling["own_cores"], 2) == 1.82  # 2 cores / 550 us = 3,636/s, over 2,000
    # 2 CPUs / (550 + 100 us) = 3,077/s over 2,000; over 1,800: 1.71; 2 / (500 + 91) over 2,200
    assert round(scaling["these_cpus"], 2) == 1.54
    markdown = results._scaling_markdown()
    assert "| 50 | 1.50x | 98% | 500 / 550 | 100 | 1.54x | 1.82x |" in markdown
    assert results.to_json()["scaling"] == {"50": scaling, "200": None}  # in the JSON report too


def test_the_tail_is_held_to_4x_the_gateways_own_p50_at_c200_and_at_c1() -> None:
    """#17's bound at c200, and ours at c1: there, a p99 of 10 ms against a p50 of 0.7 ms was
    the event loop kept waiting for the GIL by the ledger writer."""
    results = Results(meta={})
    for concurrency, p50, p99 in ((200, 150.0, 240.0), (1, 0.7, 10.3)):
        measured = replace(result(1000, None), p50_ms=p50, p99_ms=p99)
        results.row("gateway", concurrency).rounds.append(measured)
    checks = {check.name: check for check in results.checks()}
    c200 = checks["p99 at c200 vs the gateway's own p50"]
    assert (c200.measured, c200.target, c200.passed) == ("1.60x (240 vs 150 ms)", "<= 4x", True)
    c1 = checks["p99 at c1 vs the gateway's own p50"]
    assert (c1.measured, c1.passed) == ("14.71x (10.30 vs 0.70 ms)", False)
    assert checks["p99 at c200 vs the floor's p99"].passed is None  # no floor measured


def test_the_report_sets_the_c1_figures_beside_the_floors_own() -> None:
    """The added-latency targets at c1 are absolute: the floor's own p50 tells what the machine
    allows (this session's: 0.82 ms for a do-nothing view, the gateway's whole call 0.74 ms)."""
    results = Results(meta={})
    assert results.c1_floor() is None
    for target, p50 in (("upstream", 0.03), ("floor", 0.82), ("gateway", 0.74)):
        results.row(target, 1).rounds.append(replace(result(1000, None), p50_ms=p50))
    assert results.c1_floor() == {"floor": 0.82, "gateway": 0.74, "upstream": 0.03}
    [line] = [line for line in results._c1_floor_markdown() if line]
    assert "at p50 0.82 ms, 0.79 ms over the upstream's own" in line
    assert "at 0.74 ms (0.90x the floor's)" in line
    assert results.to_json()["c1_p50_ms"]["floor"] == 0.82


def test_limits_in_redis_are_held_to_three_quarters_of_the_gateway_and_asked_for() -> None:
    """The gateway with its counters in Redis, round by round against the gateway's; measured
    only with --redis-url (``make bench`` passes one when Redis answers)."""
    from bench.run import REDIS, parse_args

    results = Results(meta={})
    name = "limits counted in Redis, c50 (req/s vs in memory; ours)"
    assert {c.name: c for c in results.checks()}[name].measured == "n/a (no --redis-url)"
    for gateway, redis in ((1000, 880), (1200, 1000), (900, 600)):  # 0.88, 0.83, 0.67
        results.row("gateway", 50).rounds.append(result(gateway, None))
        results.row(REDIS, 50).rounds.append(result(redis, None))
    check = {c.name: c for c in results.checks()}[name]
    assert (check.measured, check.target, check.passed) == ("83% of the gateway's", ">= 75%", True)
    assert REDIS not in parse_args([]).only and parse_args([]).everything
    assert REDIS in parse_args(["--redis-url", "redis://127.0.0.1:6379/14"]).only


def test_the_gateway_on_postgresql_is_held_to_four_fifths_of_the_gateway_and_asked_for() -> None:
    """The gateway on PostgreSQL, round by round against the gateway's (SQLite by default);
    measured only with --postgres-url (``make bench`` passes one when PostgreSQL answers)."""
    from bench.run import ONLY_AT, POSTGRES, parse_args

    results = Results(meta={})
    name = "the gateway on PostgreSQL, c50 (req/s vs the gateway; ours)"
    assert {c.name: c for c in results.checks()}[name].measured == "n/a (no --postgres-url)"
    for gateway, postgres in ((1000, 700), (1200, 1000), (900, 780)):  # 0.70, 0.83, 0.87
        results.row("gateway", 50).rounds.append(result(gateway, None))
        results.row(POSTGRES, 50).rounds.append(result(postgres, None))
    check = {c.name: c for c in results.checks()}[name]
    assert (check.measured, check.target, check.passed) == ("83% of the gateway's", ">= 80%", True)
    assert POSTGRES not in parse_args([]).only and parse_args([]).everything
    given = parse_args(["--postgres-url", "postgres://postgres@127.0.0.1:5432/postgres"])
    assert POSTGRES in given.only and given.everything
    assert ONLY_AT[POSTGRES] == {1, 50}
