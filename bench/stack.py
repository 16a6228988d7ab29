"""The system under test: the fake upstream, the gateway and the bare ninja baseline.

The gateway runs as production runs it (granian or uvicorn, uvloop, no access log) against its
own config.toml and a fresh ``TOLLGATE_VAR_DIR``: a new SQLite database there, or the PostgreSQL
database named by ``DATABASE_URL`` when it is set. Both are migrated first, and a fresh key is
issued to the tenant ``bench``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.processes import (
    ROOT,
    Processes,
    StartupError,
    free_port,
    granian_worker_pids,
    read_ready_port,
    wait_for_server,
    worker_pids,
)
from tollgate.uvicorn_loop import UVICORN_LOOP_ARG

MODEL = "bench-model"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"


@dataclass
class Service:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: int = 1
    server: str = "uvicorn"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def worker_pids(self) -> list[int]:
        if self.server == "granian":  # its workers are children of its main process, always
            return granian_worker_pids(self.process.pid)
        return worker_pids(self.process.pid, self.workers)


def write_config(path: Path, upstream: str) -> Path:
    """A config.toml routing ``bench-model`` to the fake upstream, with prices (so cost is
    computed on every call, as in production)."""
    path.write_text(
        f"""# Tollgate load benchmark: one model, routed to the fake upstream.
[providers.fake]
type = "openai"
base_url = "{upstream}/v1"
api_key_env = "{UPSTREAM_KEY_ENV}"

[models."{MODEL}"]
provider = "fake"
upstream_model = "fake-gpt"
input_per_mtok = 0.15
output_per_mtok = 0.60
cache_read_per_mtok = 0.075
"""
    )
    return path


def django_env(config: Path, var_dir: Path, settings_module: str) -> dict[str, str]:
    """The environment of the Django processes: production defaults, a private var dir."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings_module,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),  # required without DEBUG
        "TOLLGATE_CONFIG": str(config),
        "TOLLGATE_VAR_DIR": str(var_dir),
        "TOLLGATE_LEDGER_DIR": str(var_dir / "ledger"),
        UPSTREAM_KEY_ENV: "sk-bench-upstream",
        "TOLLGATE_LOG_FORMAT": "json",  # as deploy/env.example: the request log as JSON lines
        "PYTHONUNBUFFERED": "1",
        # As `make serve` runs it: two malloc arenas instead of one per thread (see README).
        "MALLOC_ARENA_MAX": "2",
    }
    for name in ("TOLLGATE_AUTH_CACHE_SECONDS", "TOLLGATE_LEDGER_FLUSH_SECONDS", "REDIS_URL"):
        env.pop(name, None)  # the production defaults, whatever the caller's shell says
    # (REDIS_URL: counters in process memory, but for the target that asks for Redis)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    """Run ``manage.py`` with the gateway's environment; return its stdout."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise StartupError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def prepare_database(env: dict[str, str]) -> str:
    """Migrate (idempotent), then issue a key for tenant ``bench``; return the raw key."""
    manage(env, "migrate", "--noinput")
    output = manage(env, "create_api_key", "--tenant", "bench", "--name", "load-benchmark")
    return output.strip().splitlines()[-1].strip()


def limit_tenant(env: dict[str, str]) -> None:
    """Give tenant ``bench`` a request rate, a token rate and a budget, as production tenants
    have, none of which a run comes near: every call is counted against them. (The token rate
    stays under PostgreSQL's integer column, 2**31 - 1.)"""
    manage(
        env,
        *("set_limits", "--tenant", "bench", "--rpm", str(10**8), "--tpm", str(2 * 10**9)),
        *("--budget-usd", str(10**8), "--period", "monthly"),
    )


def create_database(server_url: str) -> str:
    """A new, empty database for this run on the PostgreSQL server of ``server_url`` (a URL of
    any database there); its URL. ``drop_database`` removes it: nothing else on the server is
    touched."""
    name = f"tollgate_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def drop_database(server_url: str, database_url: str) -> None:
    """Drop the database of ``database_url`` (made by ``create_database``), connected to the
    server through ``server_url``; its gateways are stopped, but close any connection left."""
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def start_upstream(
    processes: Processes, log_dir: Path, delay_ms: float, stream_chunks: int, chunk_gap_ms: float
) -> Service:
    log_path = log_dir / "fake-upstream.log"
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "fake_upstream.py"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--delay-ms",
        str(delay_ms),
        "--stream-chunks",
        str(stream_chunks),
        "--chunk-gap-ms",
        str(chunk_gap_ms),
    ]
    process = processes.spawn(cmd, log_path=log_path, pipe_stdout=True)
    port = read_ready_port(process)
    return Service("upstream", f"http://127.0.0.1:{port}", process, log_path)


SERVER = "uvicorn"
"""The ASGI server of the gateway and its baselines (``--server``): uvicorn or granian."""


STARTED_LINE = {"granian": "Started worker-", "uvicorn": "Application startup complete"}
"""What each server logs once per worker that has started: measuring before every worker has
started would measure fewer workers (and granian loses a stop signal sent meanwhile)."""


def server_command(app: str, port: int, workers: int) -> list[str]:
    """``uvicorn APP --workers W --loop tollgate.uvicorn_loop:new_event_loop --http httptools
    --no-access-log``, or granian's equivalent, on 127.0.0.1."""
    if SERVER == "granian":
        if app == "tollgate.asgi:application":
            app = "tollgate.asgi:granian_application"  # as the unit serves it
        return [
            *(sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", str(workers), "--loop", "uvloop"),
            *("--no-access-log", app),
        ]
    return [
        *(sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--loop", UVICORN_LOOP_ARG, "--http", "httptools"),
        "--no-access-log",
    ]


def start_server(
    processes: Processes,
    name: str,
    app: str,
    env: dict[str, str],
    workers: int,
    log_dir: Path,
    probe_path: str,
) -> Service:
    """The ASGI server (``SERVER``) serving ``app`` with ``workers`` workers on 127.0.0.1."""
    port = free_port()
    log_path = log_dir / f"{name}.log"
    process = processes.spawn(server_command(app, port, workers), env=env, log_path=log_path)
    base_url = f"http://127.0.0.1:{port}"
    wait_for_server(process, base_url + probe_path, log_path, workers, STARTED_LINE[SERVER])
    service = Service(name, base_url, process, log_path, workers, SERVER)
    if len(service.worker_pids()) != workers:
        raise StartupError(f"{name}: expected {workers} workers, found {service.worker_pids()}")
    return service
