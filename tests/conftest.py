"""Shared fixtures.

Three tenants, alice, bob and charlie, each with a key, so that isolation is part of every test.
Unit tests fake the upstream at the HTTP boundary (``httpx.MockTransport``) through the
``gateway_runtime`` fixture; end-to-end tests start a fake upstream process and the gateway
(``gateway_server``, under granian or uvicorn: ``TEST_SERVER``), both on 127.0.0.1, sharing the
test database with this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from django.db import connection
from hypothesis import HealthCheck, settings

from gateway import runtime
from gateway.models import ApiKey, Tenant, UsageRecord
from gateway.tenants import auth
from gateway.usage.ledger import LedgerWriter
from providers.base import BaseProvider
from providers.config import GatewayConfig, load_config
from providers.factory import ProviderFactory
from tollgate.uvicorn_loop import UVICORN_LOOP_ARG

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.gateway_logs import check_gateway_log  # noqa: E402

from fake_upstream import run_fake_upstream  # noqa: E402

if TYPE_CHECKING:
    from support.asgi_replies import Tracebacks

TENANT_NAMES = ("alice", "bob", "charlie")


@dataclass
class TenantKey:
    tenant: Tenant
    key: ApiKey
    raw: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw}"}


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """After the suite, end the connections that other threads (asgiref's sync executor, ledger
    writers) still hold to the PostgreSQL test database, so that it can be dropped."""
    yield
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture
def tenants(
    transactional_db: None, request: pytest.FixtureRequest
) -> Iterator[dict[str, TenantKey]]:
    """alice, bob and charlie, each with one working key (committed: other processes see it).

    After an end-to-end test, the ledger is left to go quiet before the database is emptied: a
    gateway process writes its rows a flush interval after the answers, and its insert racing
    the test's TRUNCATE deadlocked on PostgreSQL (each holding a table the other wanted)."""
    result = {}
    for name in TENANT_NAMES:
        tenant = Tenant.objects.create(name=name)
        key, raw = ApiKey.objects.issue(tenant, name=f"{name}-key")
        result[name] = TenantKey(tenant, key, raw)
    auth._key_cache.clear()
    yield result
    if request.node.get_closest_marker("e2e") is not None:
        wait_for_quiet_ledger()


def wait_for_quiet_ledger(quiet: float = 0.15, timeout: float = 5.0) -> None:
    """Until no ledger row has landed for ``quiet`` seconds (3 flush intervals of the test
    gateways), or ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = UsageRecord.objects.count()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now_seen = UsageRecord.objects.count()
        if now_seen != seen:
            seen, stable_since = now_seen, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return


ALL_OPERATIONS = '["chat", "embeddings", "images", "speech", "transcription"]'
BEHAVIOUR_MODELS = (
    "echo",
    "slow",
    "slow-stream",
    "fail-500",
    "fail-429",
    "fail-400",
    "fail-401",
    "drop-mid-stream",
    "garbage",
)
"""Models named after a fake upstream behaviour: every operation, every price."""
MEDIA_MODELS = f"""
[models."embed-test"]
provider = "fake"
upstream_model = "fake-embed"
operations = ["embeddings"]
input_per_mtok = 0.02

[models."image-test"]
provider = "fake"
upstream_model = "fake-dall-e"
operations = ["images"]
per_image = 0.04
image_prices = {{ "1024x1024/hd" = 0.08, "1792x1024/hd" = 0.12 }}

[models."gpt-image-test"]
provider = "fake"
upstream_model = "fake-gpt-image"
operations = ["images"]
input_per_mtok = 5.0
output_per_mtok = 40.0
per_image = 0.042

[models."tts-test"]
provider = "fake"
upstream_model = "fake-tts"
operations = ["speech"]
per_mchar = 15.0

[models."stt-test"]
provider = "fake"
upstream_model = "fake-whisper"
operations = ["transcription"]
per_minute = 0.006

[models."claude-media"]
provider = "fake-anthropic"
upstream_model = "claude-fake"
operations = {ALL_OPERATIONS}
"""


def write_config(path: Path, upstream: str, **provider_options: object) -> Path:
    """A config.toml routing the test models to ``upstream`` (a fake upstream's base URL).

    ``gpt-test`` is a priced chat model; the behaviour models (echo, fail-500, ...) declare every
    operation, priced 1.0 / 2.0 USD per Mtok, 0.04 per image, 15 per million characters and
    0.006 per minute; ``embed-test``, ``image-test``, ``gpt-image-test``, ``tts-test`` and
    ``stt-test`` serve one operation each; ``claude-media`` is an Anthropic model that declares
    every operation (its provider implements chat only)."""
    options = "".join(f"{key} = {json.dumps(value)}\n" for key, value in provider_options.items())
    text = f"""
[providers.fake]
type = "openai"
base_url = "{upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
passthrough_models = true
{options}
[providers.fake-anthropic]
type = "anthropic"
base_url = "{upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."gpt-test"]
provider = "fake"
upstream_model = "fake-gpt"
input_per_mtok = 1.0
output_per_mtok = 2.0
cache_read_per_mtok = 0.5
"""
    text += "".join(
        f"""
[models."{name}"]
provider = "fake"
operations = {ALL_OPERATIONS}
input_per_mtok = 1.0
output_per_mtok = 2.0
per_image = 0.04
per_mchar = 15.0
per_minute = 0.006
"""
        for name in BEHAVIOUR_MODELS
    )
    path.write_text(text + MEDIA_MODELS)
    return path


# --- unit tests: the upstream faked at the HTTP boundary ----------------------------------------

UpstreamHandler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def gateway_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., runtime.Runtime]]:
    """Install a runtime whose upstream is ``handler`` (``mock_config``'s configuration); its
    ledger is flushed by hand. Each install is a new runtime: a new router, say, with no
    deployment cooling down from a call before; the one before has its ledger stopped (its
    journal file let go: a fuzz installs thousands)."""
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream-secret")
    installed: list[runtime.Runtime] = []

    def install(
        handler: UpstreamHandler, extra_config: str = "", **provider_options: object
    ) -> runtime.Runtime:
        config = mock_config(tmp_path, extra_config, **provider_options)
        current = runtime.Runtime(
            config=config,
            factory=ProviderFactory(config, transport=lambda _: httpx.MockTransport(handler)),
            ledger=LedgerWriter(tmp_path / "ledger", autostart=False),
        )
        if installed:
            installed.pop().ledger.stop()
        installed.append(current)
        runtime.install(current)
        return current

    yield install
    runtime.install(None)
    for current in installed:
        current.ledger.stop()


def mock_config(
    tmp_path: Path, extra_config: str = "", **provider_options: object
) -> GatewayConfig:
    """``write_config``'s configuration (with ``extra_config``'s TOML after it), its upstream a
    name only a mock transport answers."""
    path = write_config(tmp_path / "config.toml", "http://upstream.test", **provider_options)
    if extra_config:
        path.write_text(path.read_text() + extra_config)
    return load_config(path)


def provider_answering(
    tmp_path: Path, handler: UpstreamHandler, **provider_options: object
) -> BaseProvider:
    """The ``fake`` provider of ``mock_config``, its upstream ``handler``, for a test that
    drives a provider without the gateway (``FAKE_UPSTREAM_KEY`` must be set)."""
    config = mock_config(tmp_path, **provider_options)
    factory = ProviderFactory(config, transport=lambda _: httpx.MockTransport(handler))
    return factory.get("fake")


def ledger_rows(current: runtime.Runtime) -> list[UsageRecord]:
    current.ledger.flush()
    return list(UsageRecord.objects.order_by("id"))


# --- hypothesis tests through the ASGI app in process -------------------------------------------


def examples(count: int) -> settings:
    """``count`` examples, the same ones every run."""
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def run() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    """Runs a coroutine on one event loop kept for the whole fuzz run."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    """What the gateway should never log (``Tracebacks``), kept while the test runs."""
    from support.asgi_replies import Tracebacks  # the ASGI app: only for the tests that use it

    handler = Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


# --- end-to-end: real processes on 127.0.0.1 ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    with run_fake_upstream(slow_seconds=3) as base_url:
        yield base_url


def database_url() -> str:
    """The URL of the test database this process uses, for the gateway process to share."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    user = settings.get("USER") or "postgres"
    host = settings.get("HOST") or "127.0.0.1"
    port = settings.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{settings['NAME']}"


GATEWAY_LOGS: list[Path] = []
"""The log of every gateway ``start_gateway`` started (a registry), read after its test module."""


@pytest.fixture(scope="module", autouse=True)
def gateway_logs_are_json_without_secrets() -> Iterator[None]:
    """After each test module, every line its gateways logged is JSON, and none holds a prompt,
    an answer or a key (``support.gateway_logs``)."""
    first = len(GATEWAY_LOGS)
    yield
    for path in GATEWAY_LOGS[first:]:
        if path.exists():
            check_gateway_log(path)


@dataclass
class GatewayServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> int:
        """SIGTERM, as a process manager would: the gateway flushes its ledger and exits."""
        self.process.terminate()
        return self.process.wait(timeout=15)

    def worker_pids(self) -> list[int]:
        """The processes that serve: uvicorn's one process, or the children granian starts."""
        if TEST_SERVER != "granian":
            return [self.process.pid]
        pids = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL every process of the gateway, as the OOM killer would its workers."""
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.kill()


JSON_LOG_CONFIG = ("--log-config", "tollgate/uvicorn_json_logging.json")
TEST_SERVER = os.environ.get("TOLLGATE_TEST_SERVER", "uvicorn")
"""The ASGI server of the end-to-end gateways: uvicorn on Tollgate's loop (the unit's and ``make
serve``'s), or granian (``make test`` runs the suite with each, one per database)."""
UVICORN_LOOP = ("--loop", UVICORN_LOOP_ARG, "--http", "httptools")
"""uvicorn's loop and HTTP parser, as ``make serve`` and the unit give them."""


def server_command(port: int, workers: int, server_args: tuple[str, ...] = ()) -> list[str]:
    common = ("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers))
    if TEST_SERVER == "granian":
        return [
            *(sys.executable, "-m", "granian", "--interface", "asgi", *common, "--no-access-log"),
            *("--log-config", "tollgate/granian_json_logging.json", *server_args),
            "tollgate.asgi:granian_application",
        ]
    return [
        *(
            sys.executable,
            "-m",
            "uvicorn",
            "tollgate.asgi:application",
            *common,
            *UVICORN_LOOP,
            "--no-access-log",
            *server_args,
        ),
        # Several workers: uvicorn's supervisor never imports the app, and logs JSON only with
        # the log config ``make serve`` gives it too.
        *(JSON_LOG_CONFIG if workers > 1 and "--log-config" not in server_args else ()),
    ]


GATEWAY_SECRET_KEY = secrets.token_urlsafe(50)
"""The test gateways' DJANGO_SECRET_KEY: without DEBUG a server refuses to start without one."""


def start_gateway(
    tmp: Path,
    upstream: str,
    *,
    env: dict[str, str] | None = None,
    server_args: tuple[str, ...] = (),
    workers: int = 1,
    **provider_options: object,
) -> GatewayServer:
    """Start the gateway (under ``TEST_SERVER``); ``env`` overrides its environment (say, the
    flush delay), ``server_args`` are added to the server's command line. With ``workers`` > 1,
    returns once every worker has started. It logs JSON lines to ``tmp/gateway.log``, checked
    after the test module (``gateway_logs_are_json_without_secrets``)."""
    port = free_port()
    config = write_config(tmp / "config.toml", upstream, **provider_options)
    process_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tollgate.settings",
        "DJANGO_SECRET_KEY": GATEWAY_SECRET_KEY,
        "TOLLGATE_CONFIG": str(config),
        "DATABASE_URL": database_url(),
        "TOLLGATE_AUTH_CACHE_SECONDS": "0",
        "TOLLGATE_LEDGER_FLUSH_SECONDS": "0.05",
        "TOLLGATE_LEDGER_DIR": str(tmp / "ledger"),
        "TOLLGATE_METRICS_DIR": str(tmp / "metrics"),
        "FAKE_UPSTREAM_KEY": "sk-upstream-secret",
        "TOLLGATE_LOG_FORMAT": "json",
        **(env or {}),
    }
    log_path = tmp / "gateway.log"
    GATEWAY_LOGS.append(log_path)
    process = subprocess.Popen(
        server_command(port, workers, server_args),
        cwd=ROOT,
        env=process_env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: {log_path.read_text()}")
        try:
            httpx.get(base_url + "/v1/models", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        server = GatewayServer(base_url, process, log_path)
        # Every worker started: granian 2.8 loses a stop signal that comes while one starts
        # (its main process, or that worker, then waits for the kill timeout).
        if TEST_SERVER == "granian" and log_path.read_text().count("Started worker-") >= workers:
            return server
        if workers == 1 or log_path.read_text().count("Application startup complete") >= workers:
            return server
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"gateway did not start: {log_path.read_text()}")


@pytest.fixture(scope="module")
def gateway_server(
    django_db_setup: None,
    django_db_blocker: object,
    fake_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    """The gateway, on the test database, routed to the fake upstream (1 s timeout)"""
    server = start_gateway(tmp_path_factory.mktemp("gateway"), fake_upstream, timeout_seconds=1.0)
    yield server
    if server.process.poll() is None:
        server.stop()


def wait_for_rows(count: int, timeout: float = 10.0, **filters: object) -> list[UsageRecord]:
    """Poll the ledger until ``count`` rows match ``filters`` (the gateway writes in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageRecord.objects.filter(**filters).order_by("id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def start_gateway_with_config(
    tmp: Path, config_path: Path, *, env: dict[str, str] | None = None
) -> GatewayServer:
    """Start the gateway with a config.toml of one's own (``config_path``) instead
    of ``write_config``'s: ``start_gateway`` with ``TOLLGATE_CONFIG`` overridden. The keys of
    ``env`` (upstream keys, say) are added to the gateway's environment."""
    if config_path.resolve() == (tmp / "config.toml").resolve():
        raise ValueError("start_gateway writes tmp/config.toml: give the config another name")
    return start_gateway(
        tmp, "http://unused.invalid", env={**(env or {}), "TOLLGATE_CONFIG": str(config_path)}
    )
