"""Tollgate's load benchmark: ``make bench`` (or ``.venv/bin/python bench/run.py --help``).

Starts the fake upstream, the gateway and a bare django-ninja baseline on 127.0.0.1, drives them
with wrk in interleaved rounds, times streams with a small Python client, checks the ledger after
every gateway measurement, samples worker memory, and writes bench/results/<UTC>-w<W>.json|.md.
Every process it starts is stopped before it exits, on errors and Ctrl-C too. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find bench.*

from bench import stack, wrk
from bench.ledger import Ledger, LedgerCheck
from bench.processes import (
    ROOT,
    Processes,
    StartupError,
    cpu_seconds,
    log_tail,
    machine_cpu_seconds,
    rss_snapshot,
)
from bench.pyspy import read_collapsed, summarize
from bench.report import Results, write_results
from bench.stack import (
    Service,
    create_database,
    django_env,
    drop_database,
    limit_tenant,
    prepare_database,
    start_server,
    start_upstream,
    write_config,
)
from bench.stream_client import measure_stream

VARIANTS: dict[str, dict[str, str]] = {
    "gateway-nojournal": {"TOLLGATE_LEDGER_JOURNAL": "false"},
    "gateway-nometrics": {"TOLLGATE_METRICS": "false"},
}
"""The gateway again with one feature off (its environment): a second process on the same
database, measured beside the gateway so that the difference is what the feature costs."""
REDIS = "gateway-redis"
"""The gateway again with its counters in Redis (``--redis-url``): the bench tenant's rate limits
and budget, counted in every call, shared as several processes share them in production."""
POSTGRES = "gateway-postgres"
"""The gateway again on PostgreSQL (``--postgres-url``), production's database, where the default
run uses SQLite: a database of its own on that server, created for the run and dropped after it.
Its ledger writer's batches and key lookups are PostgreSQL's (the writer's cost there went unseen
for seven passes of issue #17, the bench measuring SQLite alone)."""
DOUBLED = "gateway-2x"
"""The gateway again with twice the workers (issue #17: two workers on two cores at least 1.8x
one worker's throughput), measured beside it in each round."""
TARGETS = (
    *("upstream", "floor", "bare", "gateway", *VARIANTS),
    *(REDIS, POSTGRES, DOUBLED, "gateway-stream"),
)
"""wrk targets, in the order each round visits them."""
ONLY_AT = {"gateway-nometrics": {50}, REDIS: {50}, POSTGRES: {1, 50}, DOUBLED: {50, 200}}
"""Targets measured at some concurrencies only (those among --concurrency)."""
SELECTABLE = (*TARGETS, "ttfb", "metrics-cost", "request-log")
PATH = "/v1/chat/completions"
LEAK_FIRST_CALLS = 10_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workers", type=int, default=1, help="server workers (gateway and baselines)")
    p.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="the ASGI server of the gateway and its baselines",
    )
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk measurement")
    p.add_argument("--concurrency", default="1,50,200", help="comma-separated connection counts")
    p.add_argument("--delay-ms", type=float, default=0.0, help="fake upstream's answer delay")
    p.add_argument("--stream-chunks", type=int, default=20, help="content events per stream")
    p.add_argument("--chunk-gap-ms", type=float, default=0.0, help="pause between stream events")
    p.add_argument("--stream-requests", type=int, default=200, help="TTFB client requests")
    p.add_argument("--leak-calls", type=int, default=0, help="also drive N calls at c50 for RSS")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway under c50 load")
    p.add_argument("--only", default="", help=f"subset of {SELECTABLE}")
    p.add_argument(
        "--redis-url",
        default="",
        help=f"a Redis database for {REDIS} (its tg:* keys are the bench's); none: not measured",
    )
    p.add_argument(
        "--postgres-url",
        default="",
        help=f"a PostgreSQL server (the URL of any database on it) where {POSTGRES} gets a "
        "database of its own, dropped after the run; none: not measured",
    )
    a = p.parse_args(argv)
    a.concurrency = [int(c) for c in str(a.concurrency).split(",") if c.strip()]
    asked = {REDIS: a.redis_url, POSTGRES: a.postgres_url}  # measured when given
    everything = [t for t in SELECTABLE if asked.get(t, True)]
    a.only = [t.strip() for t in str(a.only).split(",") if t.strip()] or everything
    if unknown := set(a.only) - set(SELECTABLE):
        p.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SELECTABLE)}")
    for target, flag in ((REDIS, "--redis-url"), (POSTGRES, "--postgres-url")):
        if target in a.only and not asked[target]:
            p.error(f"--only {target} needs {flag}")
    a.everything = a.only == everything
    if a.workers < 1 or a.rounds < 1 or a.duration < 1 or not a.concurrency:
        p.error("--workers, --rounds, --duration (s) must be >= 1, --concurrency not empty")
    if a.leak_calls and a.leak_calls <= LEAK_FIRST_CALLS:
        p.error(f"--leak-calls must exceed {LEAK_FIRST_CALLS} (RSS is compared after those)")
    return a


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_info(args: argparse.Namespace, database: str) -> dict[str, object]:
    def git(*cmd: str) -> str:
        result = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return result.stdout.strip()

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--", ".") else ""
    return {
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "git": (git("rev-parse", "--short", "HEAD") or "unknown") + dirty,
        "wrk": wrk.wrk_version(),
        "workers": args.workers,
        "server": args.server,
        "database": database,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "concurrency": args.concurrency,
        "delay_ms": args.delay_ms,
        "stream_chunks": args.stream_chunks,
        "chunk_gap_ms": args.chunk_gap_ms,
        "targets": args.only,
    }


@dataclass
class Books:
    """A database the gateways write their ledger to: the bench key issued there, the ledger's
    reader, and the id above which the next measurement's rows are counted (None: take it once
    the ledger is quiet)."""

    key: str
    ledger: Ledger
    floor: int | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, processes: Processes, tmp: Path) -> None:
        self.args = args
        self.processes = processes
        self.tmp = tmp
        self.upstream: Service | None = None
        self.gateway: Service | None = None
        self.variants: dict[str, Service] = {}  # VARIANTS: the gateway with a feature off
        self.bare: Service | None = None
        self.floor_service: Service | None = None  # bench/floor: the stack's floor (#17)
        self.books: dict[str, Books] = {}  # "main" (SQLite or DATABASE_URL), POSTGRES's
        self.scratch_database = ""  # POSTGRES's, dropped by close()
        self.env: dict[str, str] = {}  # the gateway's environment
        self.results = Results(meta={})

    # --- setup ---------------------------------------------------------------------------------

    def start(self) -> None:
        a, only = self.args, set(self.args.only)
        self.upstream = start_upstream(
            self.processes, self.tmp, a.delay_ms, a.stream_chunks, a.chunk_gap_ms
        )
        log(f"fake upstream on {self.upstream.base_url}")
        config = write_config(self.tmp / "config.toml", self.upstream.base_url)
        var_dir = self.tmp / "var"
        env = self.env = django_env(config, var_dir, "tollgate.settings")
        database_url = os.environ.get("DATABASE_URL")
        need_gateway = (
            bool(
                only
                & {"gateway", "gateway-stream", "ttfb", "request-log", DOUBLED, REDIS, POSTGRES}
                | only & set(VARIANTS)
            )
            or a.leak_calls
            or a.profile
        )
        if need_gateway:
            self.books["main"] = self._books(env, database_url, var_dir / "tollgate.sqlite3")
            self.gateway = start_server(
                self.processes,
                "gateway",
                "tollgate.asgi:application",
                env,
                a.workers,
                self.tmp,
                "/v1/models",
            )
            log(f"gateway on {self.gateway.base_url}, workers {self.gateway.worker_pids()}")
        variants = {name: (overrides, a.workers) for name, overrides in VARIANTS.items()}
        variants[DOUBLED] = ({}, 2 * a.workers)
        variants[REDIS] = ({"REDIS_URL": a.redis_url}, a.workers)
        if POSTGRES in only:
            self.scratch_database = create_database(a.postgres_url)
            log(f"{POSTGRES}: database {self.scratch_database}")
            overrides = {"DATABASE_URL": self.scratch_database}
            self.books[POSTGRES] = self._books({**env, **overrides}, self.scratch_database)
            variants[POSTGRES] = (overrides, a.workers)
        for name, (overrides, workers) in variants.items():
            if name in only:
                self.variants[name] = start_server(
                    self.processes,
                    name,
                    "tollgate.asgi:application",
                    {
                        **env,
                        **overrides,
                        "TOLLGATE_LEDGER_DIR": str(var_dir / f"ledger-{name}"),
                        "TOLLGATE_METRICS_DIR": str(var_dir / f"metrics-{name}"),
                    },
                    workers,
                    self.tmp,
                    "/v1/models",
                )
                log(f"{name} on {self.variants[name].base_url}, {workers} workers")
        if "bare" in only:
            bare_env = django_env(config, var_dir, "bench.bare.settings")
            self.bare = start_server(
                self.processes,
                "bare",
                "bench.bare.asgi:application",
                bare_env,
                a.workers,
                self.tmp,
                PATH,
            )
            log(f"bare ninja on {self.bare.base_url}, workers {self.bare.worker_pids()}")
        if "floor" in only:
            self.floor_service = start_server(
                self.processes,
                "floor",
                "bench.floor.asgi:application",
                {**env, "DJANGO_SETTINGS_MODULE": "bench.floor.settings"},
                a.workers,
                self.tmp,
                PATH,
            )
            log(f"floor ninja on {self.floor_service.base_url}")
        database = ("PostgreSQL" if database_url else "SQLite") if need_gateway else "no database"
        self.results.meta = machine_info(a, database)
        self.results.memory["gateway_before"] = self._rss(self.gateway)
        self.results.memory["bare_before"] = self._rss(self.bare)

    @staticmethod
    def _books(env: dict[str, str], database_url: str | None, sqlite: Path | None = None) -> Books:
        """Migrate the gateway's database, issue the bench key there and limit its tenant."""
        key = prepare_database(env)
        limit_tenant(env)
        ledger = Ledger(database_url, sqlite or Path())
        ledger.use_key(key)
        return Books(key, ledger)

    def books_of(self, target: str) -> Books | None:
        return self.books.get(POSTGRES if target == POSTGRES else "main")

    def close(self) -> None:
        """Close the ledgers' connections and drop POSTGRES's database (its gateway stopped)."""
        for books in self.books.values():
            books.ledger.close()
        if self.scratch_database:
            try:
                drop_database(self.args.postgres_url, self.scratch_database)
            except psycopg.Error as exc:  # the run's own outcome stands; say what is left
                log(f"{POSTGRES}: could not drop {self.scratch_database}: {exc}")

    @staticmethod
    def _rss(service: Service | None) -> dict[str, int | None]:
        return rss_snapshot(service.worker_pids()) if service else {}

    def _service(self, target: str) -> Service:
        service = {
            "upstream": self.upstream,
            "bare": self.bare,
            "floor": self.floor_service,
            **self.variants,
        }.get(target, self.gateway)
        assert service is not None
        return service

    def _script(self, target: str) -> Path:
        books = self.books_of(target)
        key = books.key if books else ""
        return wrk.write_script(self.tmp / f"{target}.lua", key, target == "gateway-stream")

    # --- measurements --------------------------------------------------------------------------

    def _ensure_floor(self, target: str = "gateway") -> None:
        """Gateway rows are counted above ``floor``: take it once the ledger is quiet."""
        books = self.books_of(target)
        if books and books.floor is None:
            books.floor = books.ledger.quiet_baseline()

    def _run_wrk(self, target: str, concurrency: int, duration: float, label: str) -> wrk.WrkResult:
        service = self._service(target)
        url = service.base_url + PATH
        script = self._script(target)
        workers = service.worker_pids()
        cpu_before, machine_before = cpu_seconds(workers), machine_cpu_seconds()
        result = wrk.run_wrk(
            self.processes, url, script, concurrency, duration, self.tmp / "wrk.log"
        )
        result.cpu_s = cpu_seconds(workers) - cpu_before
        result.machine_cpu_s = machine_cpu_seconds() - machine_before
        cpu = result.cpu_us_per_request
        log(
            f"{label:<28} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
            + (f"  cpu {cpu:5.0f} us/req" if cpu is not None else "")
        )
        return result

    def _check_ledger(
        self, label: str, in_flight: int, completed: int, completed_ok: int, target: str = "gateway"
    ) -> LedgerCheck | None:
        """Compare the rows written since ``floor`` with the calls the client completed."""
        books = self.books_of(target)
        if not books or books.floor is None:
            return None
        wait = 3.0 + completed / 2000  # a long run may leave a backlog to write
        check = books.ledger.check(label, in_flight, completed, completed_ok, books.floor, wait)
        books.floor = books.ledger.max_id()
        log(
            f"{'':<28} ledger {'exact' if check.exact else 'MISMATCH'}: "
            f"{check.completed_ok} x 2xx, {check.rows_200} rows 200, other {check.rows_other}, "
            f"in flight {check.extra} (<= {in_flight})"
        )
        return check

    def wrk(self, target: str, concurrency: int, duration: float, label: str) -> wrk.WrkResult:
        """One wrk run; for the gateway, followed by its ledger check, kept in the results."""
        gateway = target.startswith("gateway")
        if gateway:
            self._ensure_floor(target)
        result = self._run_wrk(target, concurrency, duration, label)
        if gateway:
            check = self._check_ledger(label, concurrency, result.requests, result.ok, target)
            if check and label.startswith("["):
                self.results.row(target, concurrency).ledger.append(check)
            elif check:
                self.results.extra_ledger.append(check)
        return result

    def run_rounds(self) -> None:
        a = self.args
        targets = [t for t in TARGETS if t in a.only]
        for target in targets:
            self.wrk(target, max(a.concurrency), 1, f"warm-up {target}")
        for round_no in range(1, a.rounds + 1):
            for concurrency in a.concurrency:
                for target in targets:
                    if concurrency not in ONLY_AT.get(target, {concurrency}):
                        continue
                    label = f"[r{round_no}] {target} c{concurrency}"
                    result = self.wrk(target, concurrency, a.duration, label)
                    self.results.row(target, concurrency).rounds.append(result)

    def run_streams(self) -> None:
        """TTFB / TTLB at concurrency 1, direct to the upstream and through the gateway."""
        body = wrk.request_body(stream=True).encode()
        n = self.args.stream_requests
        for name, service in (("upstream", self.upstream), ("gateway", self.gateway)):
            assert service is not None
            if name == "gateway":
                self._ensure_floor()
            timings = measure_stream(service.base_url, PATH, body, self.books["main"].key, count=n)
            self.results.streams[name] = timings.summary()
            log(f"stream c1 {name:<19} {timings.summary()}")
            if timings.first_error:
                self.results.notes.append(f"stream client, {name}: {timings.first_error}")
            if name == "gateway":
                done = timings.completed  # sequential: nothing in flight at the end
                check = self._check_ledger("stream TTFB client c1", 1, done, done)
                if check:
                    self.results.extra_ledger.append(check)

    def run_metrics_cost(self) -> None:
        """The metrics' cost per call, in process (``bench/metrics_cost.py``)."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "metrics_cost.py")],
            cwd=ROOT,
            env={**self.env, "TOLLGATE_METRICS_DIR": str(self.tmp / "metrics-cost")},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            self.results.notes.append(f"metrics cost: failed: {done.stderr.strip()[-500:]}")
            return
        self.results.metrics_cost = json.loads(done.stdout.strip().splitlines()[-1])
        log(f"metrics per call, in process: {self.results.metrics_cost}")

    def run_request_log_cost(self, concurrency: int = 50) -> None:
        """Non-streaming req/s at c50 with the request log off, as text lines, and as JSON lines
        (``TOLLGATE_LOG_FORMAT=json``): three more gateways on the same database, each logging to
        its file, measured in interleaved rounds; the cost is the median of the rounds' drops."""
        a = self.args
        var_dir = self.tmp / "var"
        env = django_env(self.tmp / "config.toml", var_dir, "tollgate.settings")
        modes = {
            "off": {"TOLLGATE_REQUEST_LOG": "false"},
            "text": {"TOLLGATE_REQUEST_LOG": "true", "TOLLGATE_LOG_FORMAT": "text"},
            "json": {"TOLLGATE_REQUEST_LOG": "true", "TOLLGATE_LOG_FORMAT": "json"},
        }
        services = {
            mode: start_server(
                self.processes,
                f"gateway-log-{mode}",
                "tollgate.asgi:application",
                {**env, **extra, "TOLLGATE_LEDGER_DIR": str(var_dir / f"ledger-log-{mode}")},
                a.workers,
                self.tmp,
                "/v1/models",
            )
            for mode, extra in modes.items()
        }
        script = self._script("gateway")
        rps: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_no in range(a.rounds + 1):  # round 0: a 1 s warm-up each
            for mode, service in services.items():
                seconds = a.duration if round_no else 1
                url = service.base_url + PATH
                result = wrk.run_wrk(
                    self.processes, url, script, concurrency, seconds, self.tmp / "wrk.log"
                )
                log(
                    f"[r{round_no}] request log {mode:<5} c{concurrency} {result.rps:>9,.0f} req/s"
                    f"  p50 {result.p50_ms:7.2f} ms  errors {result.errors}"
                )
                if round_no:
                    rps[mode].append(result.rps)
        for service in services.values():
            self.processes.stop(service.process)
        self.books["main"].floor = None  # these calls' rows are no other measurement's
        median = {mode: statistics.median(values) for mode, values in rps.items()}
        cost = {}  # the median of each round's own ratio: a slow minute hits all modes alike
        for mode in ("text", "json"):
            ratios = [on / off for on, off in zip(rps[mode], rps["off"], strict=True)]
            cost[mode] = (1 - statistics.median(ratios)) * 100
        self.results.meta["request_log"] = {
            "concurrency": concurrency,
            "rps": rps,
            "cost_pct": cost,
        }
        self.results.notes.append(
            f"request log at c{concurrency}, median of {a.rounds} round(s): off "
            f"{median['off']:,.0f}, text {median['text']:,.0f} ({cost['text']:+.1f}% cost), "
            f"JSON {median['json']:,.0f} ({cost['json']:+.1f}% cost)"
        )
        log(self.results.notes[-1])

    def run_profile(self) -> None:
        """py-spy on the first gateway worker through an extra 10 s at c50: its collapsed stacks
        (``--format raw``, one line per stack, each thread's named) are kept beside the report,
        which gives where the event loop's time went (``bench/pyspy.py``)."""
        assert self.gateway is not None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            self.results.notes.append("--profile: py-spy is not installed (pip install py-spy)")
            return
        stem = self.results.meta["stem"]
        raw = ROOT / "bench" / "results" / f"{stem}-profile.txt"
        raw.parent.mkdir(parents=True, exist_ok=True)
        pid = self.gateway.worker_pids()[0]
        spy_log = self.tmp / "py-spy.log"
        cmd = [
            py_spy,
            "record",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--duration",
            "11",
        ]
        spy = self.processes.spawn([*cmd, "-o", str(raw), "--pid", str(pid)], log_path=spy_log)
        time.sleep(1.0)
        self.wrk("gateway", 50, 10, "profile c50 (py-spy)")
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=30)
        self.processes.stop(spy, grace=5)
        if spy.returncode == 0 and raw.exists():
            stacks = read_collapsed(raw.read_text())
            self.results.profile = summarize(stacks, str(raw.relative_to(ROOT)))
            log(f"profile: {raw}")
        else:
            self.results.notes.append(
                f"--profile: py-spy failed (ptrace not permitted?): {log_tail(spy_log, 3)}"
            )

    def run_leak(self) -> None:
        """Drive the first 10,000 calls, sample RSS, drive the rest, sample again. wrk cannot stop
        after N requests (its main thread sleeps the whole duration), so each phase is a series
        of timed runs (at most 15 s, RSS sampled after each) sized from the rate seen so far."""
        assert self.gateway is not None
        calls, concurrency = self.args.leak_calls, 50
        pids = self.gateway.worker_pids()
        measured = self.results.get("gateway", concurrency)
        rate = measured.rps if measured else 500.0
        phase_rss: list[tuple[int, int]] = []  # (calls so far, RSS KiB) at the end of each phase
        samples: list[tuple[int, int]] = []
        done = 0
        for phase, target in (("leak first", LEAK_FIRST_CALLS), ("leak rest", calls)):
            self._ensure_floor()
            completed = completed_ok = runs = 0
            while done < target:
                seconds = min(15, max(1, int((target - done) / max(rate, 1.0))))
                label = f"{phase} {done:,}/{target:,}"
                result = self._run_wrk("gateway", concurrency, seconds, label)
                if result.requests == 0:
                    raise RuntimeError("leak run: the gateway completed no calls")
                rate = result.rps
                done += result.requests
                completed += result.requests
                completed_ok += result.ok
                runs += 1
                samples.append((done, sum(v or 0 for v in rss_snapshot(pids).values())))
            label = f"{phase}: {completed:,} calls in {runs} wrk runs"
            check = self._check_ledger(label, concurrency * runs, completed, completed_ok)
            if check:
                self.results.extra_ledger.append(check)
            phase_rss.append((done, sum(v or 0 for v in rss_snapshot(pids).values())))
            log(f"{'':<28} RSS after {done:,} calls: {phase_rss[-1][1] / 1024:.1f} MiB")
        (first_calls, first), (_, end) = phase_rss
        self.results.memory["leak"] = {
            "calls": done,
            "concurrency": concurrency,
            "first_calls": first_calls,
            "rss_after_first_kib": first,
            "rss_end_kib": end,
            "growth_pct": (end - first) / first * 100 if first else 0.0,
            "samples": samples,
        }

    def run(self) -> None:
        self.start()
        self.results.meta["stem"] = (
            datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-w{self.args.workers}"
        )
        if any(t in self.args.only for t in TARGETS):
            self.run_rounds()
        if "ttfb" in self.args.only:
            self.run_streams()
        if "metrics-cost" in self.args.only:
            self.run_metrics_cost()
        if "request-log" in self.args.only:
            self.run_request_log_cost()
        self.results.memory["gateway_after"] = self._rss(self.gateway)
        self.results.memory["bare_after"] = self._rss(self.bare)
        if self.args.profile:
            self.run_profile()
        if self.args.leak_calls:
            self.run_leak()
        if self.args.workers != 1:
            self.results.notes.append("the targets are defined for 1 worker")
        if not self.args.everything:
            self.results.notes.append(f"partial run: --only {','.join(self.args.only)}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack.SERVER = args.server
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    processes = Processes()
    bench = Bench(args, processes, tmp)
    keep_tmp = True
    started = time.monotonic()
    try:
        bench.run()
        stem = str(bench.results.meta["stem"])
        bench.results.meta["elapsed_s"] = round(time.monotonic() - started, 1)
        json_path, md_path, markdown = write_results(
            bench.results, ROOT / "bench" / "results", stem
        )
        print(markdown)
        log(f"written: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}")
        keep_tmp = False
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except (StartupError, RuntimeError) as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.stop_all()
        bench.close()
        if keep_tmp:
            log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
