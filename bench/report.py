"""Aggregation (median across rounds), the performance targets, and the JSON + Markdown report."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ledger import LedgerCheck
from bench.pyspy import LOOP_THREAD, Profile
from bench.wrk import WrkResult

TARGET_TITLES = {
    "upstream": "fake upstream (direct)",
    "bare": "bare django-ninja",
    "gateway": "gateway",
    "gateway-stream": "gateway, streaming",
    "gateway-nojournal": "gateway, ledger journal off",
    "floor": "floor: ninja on stock Django, nothing else",
    "gateway-nometrics": "gateway, metrics off",
    "gateway-2x": "gateway, twice the workers",
    "gateway-redis": "gateway, limits counted in Redis",
    "gateway-postgres": "gateway on PostgreSQL",
}


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Row:
    """One (target, concurrency): every round's wrk result and ledger check."""

    target: str
    concurrency: int
    rounds: list[WrkResult] = field(default_factory=list)
    ledger: list[LedgerCheck] = field(default_factory=list)

    def median(self, value: Callable[[WrkResult], float]) -> float:
        return statistics.median(value(r) for r in self.rounds)

    @property
    def rps(self) -> float:
        return self.median(lambda r: r.rps)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)

    @property
    def cpu_us_per_request(self) -> float | None:
        measured = [c for r in self.rounds if (c := r.cpu_us_per_request) is not None]
        return statistics.median(measured) if measured else None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "median": {
                "rps": round(self.rps, 1),
                "p50_ms": round(self.median(lambda r: r.p50_ms), 3),
                "p95_ms": round(self.median(lambda r: r.p95_ms), 3),
                "p99_ms": round(self.median(lambda r: r.p99_ms), 3),
                "cpu_us_per_request": self.cpu_us_per_request,
            },
            "errors_total": self.errors,
            "rounds": [r.to_json() for r in self.rounds],
            "ledger": [c.to_json() for c in self.ledger],
        }


@dataclass
class Check:
    name: str
    measured: str
    target: str
    passed: bool | None  # None: not measured in this run


@dataclass
class Results:
    meta: dict[str, Any]
    rows: dict[tuple[str, int], Row] = field(default_factory=dict)
    streams: dict[str, dict[str, float | int | str]] = field(default_factory=dict)
    extra_ledger: list[LedgerCheck] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    profile: Profile | None = None  # --profile: py-spy's stacks, summarized
    notes: list[str] = field(default_factory=list)
    metrics_cost: dict[str, float] = field(default_factory=dict)
    """``bench/metrics_cost.py``: microseconds per call (JSON, stream) and per flush."""

    def row(self, target: str, concurrency: int) -> Row:
        return self.rows.setdefault((target, concurrency), Row(target, concurrency))

    def get(self, target: str, concurrency: int) -> Row | None:
        row = self.rows.get((target, concurrency))
        return row if row and row.rounds else None

    def ledger_checks(self) -> list[LedgerCheck]:
        return [c for row in self.rows.values() for c in row.ledger] + self.extra_ledger

    def ledger_exact(self) -> bool | None:
        checks = self.ledger_checks()
        return all(c.exact for c in checks) if checks else None

    # --- targets -----------------------------------------------------------------------------

    def checks(self) -> list[Check]:
        out = self._floor_checks()
        for c in (50, 200):
            ratio = self._rps_ratio("bare", c)
            out.append(
                Check(
                    f"gateway req/s at c{c} vs bare",
                    f"{ratio:.1%}" if ratio is not None else "n/a",
                    ">= 95%",
                    None if ratio is None else ratio >= 0.95,
                )
            )
        added = self._added_p50()
        out.append(
            Check(
                "added p50 latency at c1 (gateway - upstream)",
                f"{added:.3f} ms" if added is not None else "n/a",
                "<= 0.5 ms",
                None if added is None else added <= 0.5,
            )
        )
        gw, bare = self.get("gateway", 200), self.get("bare", 200)
        out.append(
            Check(
                "c200: gateway req/s >= bare, zero errors",
                f"{gw.rps:.0f} vs {bare.rps:.0f} req/s, {gw.errors} errors"
                if gw and bare
                else "n/a",
                ">= bare, 0 errors",
                None if not (gw and bare) else gw.rps >= bare.rps and gw.errors == 0,
            )
        )
        gw50 = self.get("gateway", 50)
        out.append(
            Check(
                "vs LiteLLM: non-stream c50 req/s (10x 90)",
                f"{gw50.rps:.0f} req/s" if gw50 else "n/a",
                ">= 900",
                None if gw50 is None else gw50.rps >= 900,
            )
        )
        out.append(
            Check(
                "vs LiteLLM: added p50 latency at c1",
                f"{added:.3f} ms" if added is not None else "n/a",
                "<= 1.1 ms",
                None if added is None else added <= 1.1,
            )
        )
        ttfb = self._added_ttfb()
        out.append(
            Check(
                "streaming TTFB added at c1 (p50)",
                f"{ttfb:.3f} ms" if ttfb is not None else "n/a",
                "<= 0.5 ms",
                None if ttfb is None else ttfb <= 0.5,
            )
        )
        st = self.get("gateway-stream", 50)
        out.append(
            Check(
                "streamed calls/s at c50",
                f"{st.rps:.0f}/s" if st else "n/a",
                ">= 430",
                None if st is None else st.rps >= 430,
            )
        )
        for c in (1, 50):
            ratios = self._round_ratios("gateway", "gateway-nojournal", c)
            cost = 1 - statistics.median(ratios) if ratios else None
            out.append(
                Check(
                    f"ledger journal's cost at c{c} (req/s, journal on vs off)",
                    f"{cost:+.1%}" if cost is not None else "n/a",
                    "<= 3%",
                    None if cost is None else cost <= 0.03,
                )
            )
        out += self._metrics_checks()
        out.append(
            self._kept(
                "gateway-redis",
                "limits counted in Redis, c50 (req/s vs in memory; ours)",
                0.75,
                "--redis-url",
            )
        )
        out.append(
            self._kept(
                "gateway-postgres",
                "the gateway on PostgreSQL, c50 (req/s vs the gateway; ours)",
                0.8,
                "--postgres-url",
            )
        )
        out += self._scaling_checks()
        growth = self.memory.get("leak", {}).get("growth_pct")
        out.append(
            Check(
                "memory growth over --leak-calls",
                f"{growth:+.1f}%" if growth is not None else "n/a (no --leak-calls)",
                "<= 15%",
                None if growth is None else growth <= 15,
            )
        )
        return out

    def _metrics_checks(self) -> list[Check]:
        """The metrics' cost: wrk's throughput with them on vs off at c50 (the same rounds), and
        the direct measure, microseconds per call against a whole call's time at c50."""
        on = self.get("gateway", 50)
        ratios = self._round_ratios("gateway", "gateway-nometrics", 50)
        cost = 1 - statistics.median(ratios) if ratios else None
        wrk_check = Check(
            "metrics' cost at c50 (req/s, metrics on vs off)",
            f"{cost:+.1%}" if cost is not None else "n/a",
            "<= 3%",
            None if cost is None else cost <= 0.03,
        )
        measured, share = "n/a", None
        if self.metrics_cost:
            json_us, stream_us = self.metrics_cost["json_us"], self.metrics_cost["stream_us"]
            measured = f"{json_us:.1f} / {stream_us:.1f} us"
            if on:  # a call's whole time at c50 is 1 / req/s (per worker)
                share = max(json_us, stream_us) * on.rps / 1e6 / self.meta.get("workers", 1)
                measured += f": {share:.2%} of a call"
        direct = Check(
            "metrics per call, in process (JSON / stream), vs a call at c50",
            measured,
            "<= 3%",
            None if share is None else share <= 0.03,
        )
        return [wrk_check, direct]

    def _round_ratios(self, target: str, baseline: str, concurrency: int) -> list[float]:
        """``target``'s req/s over ``baseline``'s, round by round: each round measures both back
        to back, so the median of these is steadier than a ratio of medians when the machine's
        speed drifts."""
        a, b = self.get(target, concurrency), self.get(baseline, concurrency)
        if not (a and b):
            return []
        return [x.rps / y.rps for x, y in zip(a.rounds, b.rounds, strict=False) if y.rps]

    def _scaling_checks(self) -> list[Check]:
        """Twice the workers against the gateway, in the same rounds (issue #17)."""
        out = []
        for c in (50, 200):
            ratios = self._round_ratios("gateway-2x", "gateway", c)
            ratio = statistics.median(ratios) if ratios else None
            out.append(
                Check(
                    f"req/s at c{c}, twice the workers vs the gateway (median of rounds)",
                    f"{ratio:.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})"
                    if ratio is not None
                    else "n/a",
                    ">= 1.8x",
                    None if ratio is None else ratio >= 1.8,
                )
            )
        return out

    def scaling(self, concurrency: int) -> dict[str, float] | None:
        """What bounds twice the workers on this machine, the medians of each round's figures:
        ``ratio`` (req/s, twice the workers over the gateway), ``busy`` (the share of the
        machine's CPUs in use during the doubled run), ``gateway_us`` and ``doubled_us`` (the
        workers' CPU per call), ``others_us`` (the rest of the machine's, per call of the doubled
        run: wrk, the fake upstream, the kernel), ``these_cpus`` (the most this machine's CPUs
        allow the doubled run: every CPU over what a call takes of them, the workers' and the
        rest's, against the gateway's req/s) and ``own_cores`` (the ratio two workers would
        reach on cores of their own: twice the workers' cores over the CPU they take per call,
        against the gateway's req/s).

        Why ``these_cpus``: one worker has a core to itself while wrk and the upstream take
        from the other; doubled, the workers share every core with them. With a worker's CPU
        per call ``G`` and the rest's ``R``, two workers on two cores can reach at most
        ``2G / (G + R)`` of one: 1.8x needs ``G >= 9R``, so the faster the gateway, the
        further below 1.8x this machine holds it."""
        one, two = self.get("gateway", concurrency), self.get("gateway-2x", concurrency)
        cpus, workers = self.meta.get("nproc"), self.meta.get("workers")
        if not (one and two and cpus and workers):
            return None
        figures: dict[str, list[float]] = {}
        for a, b in zip(one.rounds, two.rounds, strict=False):
            if not (a.cpu_us_per_request and b.cpu_us_per_request and b.others_us_per_request):
                continue
            assert b.machine_cpu_s is not None
            for name, value in (
                ("ratio", b.rps / a.rps),
                ("busy", b.machine_cpu_s / (b.duration_s * cpus)),
                ("gateway_us", a.cpu_us_per_request),
                ("doubled_us", b.cpu_us_per_request),
                ("others_us", b.others_us_per_request),
                (
                    "these_cpus",
                    cpus * 1e6 / (b.cpu_us_per_request + b.others_us_per_request) / a.rps,
                ),
                ("own_cores", 2 * workers * 1e6 / b.cpu_us_per_request / a.rps),
            ):
                figures.setdefault(name, []).append(value)
        if not figures:
            return None
        return {name: statistics.median(values) for name, values in figures.items()}

    def _scaling_markdown(self) -> list[str]:
        rows = [(c, s) for c in (50, 200) if (s := self.scaling(c))]
        if not rows:
            return []
        cpus, workers = self.meta["nproc"], self.meta["workers"]
        out = [
            "",
            f"Twice the workers ({2 * workers}) on this machine's {cpus} CPUs, which also run wrk "
            "and the fake upstream (medians of the rounds; bench/README.md):",
            "",
            "| conc | req/s vs the gateway | CPUs busy | worker CPU µs/call, gateway / twice "
            "| rest of the machine µs/call | the most these CPUs allow | on cores of their own |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c, s in rows:
            out.append(
                f"| {c} | {s['ratio']:.2f}x | {s['busy']:.0%} | {s['gateway_us']:,.0f} / "
                f"{s['doubled_us']:,.0f} | {s['others_us']:,.0f} | {s['these_cpus']:.2f}x "
                f"| {s['own_cores']:.2f}x |"
            )
        out += [
            "",
            "The last two columns are derived, not measured, against the gateway's req/s: the "
            f"calls per second {cpus} CPUs give at what a call of the doubled run took of them "
            "(its workers' CPU and the rest's), and those that "
            f"{2 * workers} cores of their own would give the doubled workers at the CPU they "
            "took per call. When the CPUs are all busy, the measured ratio is bounded by what "
            "wrk and the upstream take from the same cores: with a worker's CPU per call G and "
            "the rest's R, two workers on two cores reach at most 2G / (G + R) of one, and 1.8x "
            "needs G >= 9R (bench/README.md).",
        ]
        return out

    def c1_floor(self) -> dict[str, float] | None:
        """The p50s at c1 of the floor (no upstream call), the gateway (its whole call) and
        the upstream, when all three were measured: the added-latency targets are absolute, and
        where the floor alone answers in more than 0.5 ms, the machine is what they measure."""
        floor, gateway, upstream = (self.get(name, 1) for name in ("floor", "gateway", "upstream"))
        if not (floor and gateway and upstream):
            return None
        rows = {"floor": floor, "gateway": gateway, "upstream": upstream}
        return {name: row.median(lambda r: r.p50_ms) for name, row in rows.items()}

    def _c1_floor_markdown(self) -> list[str]:
        p50 = self.c1_floor()
        if p50 is None:
            return []
        return [
            "",
            f"At c1 the floor (a do-nothing view, no upstream call) answered at p50 "
            f"{p50['floor']:.2f} ms, {p50['floor'] - p50['upstream']:.2f} ms over the upstream's "
            f"own; the gateway's whole call, the upstream's included, at {p50['gateway']:.2f} ms "
            f"({p50['gateway'] / p50['floor']:.2f}x the floor's). The added-latency targets at c1 "
            "are absolute: on a machine where the floor alone adds more than 0.5 ms, they "
            "measure the machine.",
        ]

    def _kept(self, target: str, name: str, bound: float, flag: str) -> Check:
        """``target``'s req/s at c50 as a share of the gateway's, the median of each round's
        own ratio, held to ``bound``; measured only when ``flag`` is given."""
        ratios = self._round_ratios(target, "gateway", 50)
        kept = statistics.median(ratios) if ratios else None
        return Check(
            name,
            f"{kept:.0%} of the gateway's" if kept is not None else f"n/a (no {flag})",
            f">= {bound:.0%}",
            None if kept is None else kept >= bound,
        )

    def _rps_ratio(self, baseline: str, concurrency: int) -> float | None:
        """The gateway's req/s over ``baseline``'s at ``concurrency``, when both were measured."""
        gw, base = self.get("gateway", concurrency), self.get(baseline, concurrency)
        return gw.rps / base.rps if gw and base and base.rps else None

    def _floor_checks(self) -> list[Check]:
        """Issue #17's: the gateway against the floor of the stack (bench/floor) in the same run,
        and its own tail against its median, with every feature on."""
        out = []
        for c in (50, 200):
            gw, floor = self.get("gateway", c), self.get("floor", c)
            ratio = self._rps_ratio("floor", c)
            out.append(
                Check(
                    f"req/s at c{c} vs the floor",
                    f"{ratio:.2f}x ({gw.rps:.0f} vs {floor.rps:.0f})" if gw and floor else "n/a",
                    ">= 1.0x",
                    None if ratio is None else ratio >= 1.0,
                )
            )
        gw, floor = self.get("gateway", 200), self.get("floor", 200)
        p99 = gw.median(lambda r: r.p99_ms) if gw else None
        floor_p99 = floor.median(lambda r: r.p99_ms) if floor else None
        out.append(
            Check(
                "p99 at c200 vs the floor's p99",
                f"{p99 / floor_p99:.2f}x ({p99:.0f} vs {floor_p99:.0f} ms)"
                if p99 and floor_p99
                else "n/a",
                "<= 1.5x",
                None if not (p99 and floor_p99) else p99 <= 1.5 * floor_p99,
            )
        )
        return [*out, self._own_tail(200), self._own_tail(1)]

    def _own_tail(self, concurrency: int) -> Check:
        """The gateway's p99 against its own p50: issue #17's bound at c200 (callers served in
        turn), and ours at c1, where a caller waits on nobody (the event loop kept waiting for
        the GIL by the ledger writer showed there: p99 over 10x p50)."""
        gw = self.get("gateway", concurrency)
        p99 = gw.median(lambda r: r.p99_ms) if gw else None
        p50 = gw.median(lambda r: r.p50_ms) if gw else None
        places = 2 if concurrency == 1 else 0
        return Check(
            f"p99 at c{concurrency} vs the gateway's own p50",
            f"{p99 / p50:.2f}x ({p99:.{places}f} vs {p50:.{places}f} ms)" if p99 and p50 else "n/a",
            "<= 4x",
            None if not (p99 and p50) else p99 <= 4 * p50,
        )

    def _added_p50(self) -> float | None:
        gw, up = self.get("gateway", 1), self.get("upstream", 1)
        if not (gw and up):
            return None
        return gw.median(lambda r: r.p50_ms) - up.median(lambda r: r.p50_ms)

    def _added_ttfb(self) -> float | None:
        gw, up = self.streams.get("gateway"), self.streams.get("upstream")
        if not (gw and up and gw["requests"] and up["requests"]):
            return None
        return float(gw["ttfb_p50_ms"]) - float(up["ttfb_p50_ms"])

    # --- output ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "wrk": [row.to_json() for row in self.rows.values() if row.rounds],
            "stream_c1": self.streams,
            "ledger": {
                "exact": self.ledger_exact(),
                "extra_checks": [c.to_json() for c in self.extra_ledger],
            },
            "memory": self.memory,
            "checks": [vars(c) for c in self.checks()],
            "scaling": {str(c): self.scaling(c) for c in (50, 200)},
            "c1_p50_ms": self.c1_floor(),
            "profile": self.profile.to_json() if self.profile else None,
            "metrics_cost": self.metrics_cost,
            "notes": self.notes,
        }

    def markdown(self) -> str:
        m = self.meta
        out = [
            f"## Tollgate load benchmark, {m['timestamp']}, {m['workers']} worker(s), "
            f"{m['database']}",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
            f"git {m['git']}, {m['wrk']}. Upstream: delay {m['delay_ms']} ms, "
            f"{m['stream_chunks']} stream chunks, gap {m['chunk_gap_ms']} ms. "
            f"{m['rounds']} interleaved round(s) x {m['duration_s']} s, medians shown.",
            "",
            "| target | conc | req/s | p50 ms | p95 ms | p99 ms | errors | worker CPU µs/call |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.rows.values():
            if not row.rounds:
                continue
            cpu = row.cpu_us_per_request
            out.append(
                f"| {TARGET_TITLES.get(row.target, row.target)} | {row.concurrency} "
                f"| {row.rps:,.0f} | {row.median(lambda r: r.p50_ms):.2f} "
                f"| {row.median(lambda r: r.p95_ms):.2f} | {row.median(lambda r: r.p99_ms):.2f} "
                f"| {row.errors} | {'n/a' if cpu is None else f'{cpu:,.0f}'} |"
            )
        if self.streams:
            out += [
                "",
                "Streaming at concurrency 1 (Python client, sequential requests):",
                "",
                "| target | requests | TTFB p50 ms | TTFB p95 ms | TTLB p50 ms | TTLB p95 ms "
                "| errors |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for name, s in self.streams.items():
                out.append(
                    f"| {TARGET_TITLES.get(name, name)} | {s['requests']} | {s['ttfb_p50_ms']:.3f}"
                    f" | {s['ttfb_p95_ms']:.3f} | {s['ttlb_p50_ms']:.3f} | {s['ttlb_p95_ms']:.3f}"
                    f" | {s['errors']} |"
                )
        out += ["", "Targets (defined for 1 worker):", "", "| check | measured | target | |"]
        out.append("|---|---|---|---|")
        for c in self.checks():
            verdict = {True: "PASS", False: "FAIL", None: "n/a"}[c.passed]
            out.append(f"| {c.name} | {c.measured} | {c.target} | {verdict} |")
        out += self._c1_floor_markdown() + self._scaling_markdown()
        out += self._ledger_markdown() + self._memory_markdown() + self._profile_markdown()
        out += [f"\nNote: {note}" for note in self.notes]
        return "\n".join(out) + "\n"

    def _ledger_markdown(self) -> list[str]:
        checks = self.ledger_checks()
        if not checks:
            return []
        exact = self.ledger_exact()
        strict = sum(c.strict for c in checks)
        out = [
            "",
            f"Ledger, exactly one row per call: **{'yes' if exact else 'NO'}** "
            f"({sum(c.exact for c in checks)}/{len(checks)} measurements; "
            f"200 rows == completed 2xx calls in {strict}/{len(checks)}, the others recorded "
            "200 for calls wrk dropped in flight)",
            "",
            "| measurement | completed (2xx) | rows 200 | other rows | in flight <= conc "
            "| 200 rows == 2xx | one row per call |",
            "|---|---:|---:|---|---:|---|---|",
        ]
        for c in checks:
            other = ", ".join(f"{n} x {s}" for s, n in sorted(c.rows_other.items())) or "-"
            out.append(
                f"| {c.label} | {c.completed} ({c.completed_ok}) | {c.rows_200} | {other} "
                f"| {c.extra} <= {c.concurrency} | {'yes' if c.strict else 'no'} "
                f"| {'yes' if c.exact else 'NO'} |"
            )
        return out

    def _memory_markdown(self) -> list[str]:
        mem = self.memory
        if not mem:
            return []
        out = ["", "Memory (VmRSS, MiB):", "", "| process | before load | after run |"]
        out.append("|---|---:|---:|")
        for name in ("gateway", "bare"):
            before, after = mem.get(f"{name}_before", {}), mem.get(f"{name}_after", {})
            for pid in before:
                out.append(
                    f"| {name} worker {pid} | {_mib(before[pid])} | {_mib(after.get(pid))} |"
                )
            if len(before) > 1:
                total_before = sum(v or 0 for v in before.values())
                total_after = sum(v or 0 for v in after.values())
                out.append(f"| {name}, all workers | {_mib(total_before)} | {_mib(total_after)} |")
        leak = mem.get("leak")
        if leak:
            out.append(
                f"\nLeak run: {leak['calls']:,} calls at c{leak['concurrency']}: "
                f"{_mib(leak['rss_after_first_kib'])} MiB after the first "
                f"{leak['first_calls']:,}, {_mib(leak['rss_end_kib'])} MiB at the end "
                f"({leak['growth_pct']:+.1f}%). RSS by calls: "
                + ", ".join(f"{n / 1000:.0f}k {_mib(kib)}" for n, kib in leak["samples"])
                + " (MiB)."
            )
        return out

    def _profile_markdown(self) -> list[str]:
        """Where the time goes: the event loop's samples by category, its busiest gateway
        functions, and what the other threads did beside it."""
        p = self.profile
        if p is None:
            return ["", "Where the time goes: not profiled in this run (`--profile` adds it)."]
        lead = f"Where the time goes (py-spy, c50), raw stacks in {p.raw}:"
        if not p.samples:
            return ["", f"{lead} no sample of the event loop's thread ({LOOP_THREAD})."]
        out = [
            "",
            f"{lead} the event loop's thread ({LOOP_THREAD}), {p.samples:,} samples while it ran "
            "(its waits, for the poll or for the GIL, are not sampled); each sample goes to the "
            "innermost frame a rule claims (bench/README.md).",
            "",
            "| category | share | samples |",
            "|---|---:|---:|",
        ]
        out += [f"| {name} | {p.share(name):.1%} | {n:,} |" for name, n in p.categories.items()]
        if p.other_threads:
            threads = ", ".join(
                f"{name} {n:,} ({n / p.samples:.0%} of the loop's)"
                for name, n in p.other_threads.items()
            )
            out += ["", f"Other threads, samples while they ran: {threads}."]
        out += [
            "",
            "The gateway functions the loop was in most (the innermost gateway frame of a sample: "
            "its own lines, or a library it called; own: its lines alone):",
            "",
            "| function | share | samples | own |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {f.name} | {f.samples / p.samples:.1%} | {f.samples:,} | {f.own:,} |"
            for f in p.functions
        ]
        return out


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def write_results(results: Results, directory: Path, stem: str) -> tuple[Path, Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    markdown = results.markdown()
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path, markdown
