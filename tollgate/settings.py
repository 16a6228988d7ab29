"""Django settings. Every value that varies between machines comes from the environment, read
once here through small typed helpers that name the variable when its value is wrong."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
N = TypeVar("N", int, float)


def env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


def _env_number(name: str, default: N, kind: Callable[[str], N], what: str) -> N:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {what}, got {value!r}") from None


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; the first is the default."""
    value = (os.environ.get(name) or choices[0]).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_address(name: str) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:9100`` for IPv6), or None when unset."""
    value = os.environ.get(name)
    if not value:
        return None
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ImproperlyConfigured(
            f"{name} must be host:port, such as 127.0.0.1:9100, got {value!r}"
        )
    return host, int(port)


VAR_DIR = Path(env_str("TOLLGATE_VAR_DIR", str(BASE_DIR / "var")))
"""Where local state lives: the SQLite database, the ledger spool, the generated secret key."""


DEBUG = env_bool("DJANGO_DEBUG", False)
"""Local development only (``make run`` sets it): tracebacks in the admin, no DJANGO_SECRET_KEY
needed."""


def _secret_key() -> str:
    """DJANGO_SECRET_KEY; else the development key that ``make run`` writes to var/secret_key;
    else a key for this process only (tests, one-off commands): admin sessions then end with the
    process and are not shared between workers, which is why the server refuses to start on
    either without DEBUG (``gateway.production``). Settings never write files."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    return secrets.token_urlsafe(50)


SECRET_KEY = _secret_key()
SECRET_KEY_FROM_ENVIRONMENT = bool(os.environ.get("DJANGO_SECRET_KEY"))
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

HTTPS = env_choice("DJANGO_HTTPS", ("off", "proxy", "direct"))
"""How the admin is reached over https: ``off`` (plain http, ``make run``), ``proxy`` (TLS ends at
a load balancer or proxy that sets X-Forwarded-Proto), ``direct`` (uvicorn's own --ssl-*). With
https, plain-http requests to the admin are redirected and its cookies are sent over https only.
The API and the probes never run this middleware (``tollgate.asgi``): they are not redirected."""
SECURE_SSL_REDIRECT = HTTPS != "off"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS != "off"
if HTTPS == "proxy":
    # Trusted from any sender: uvicorn must be reachable through the proxy only, and the proxy
    # must replace the header a client sends.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
"""Strict-Transport-Security on https answers (Django sends it on those only); 0: none."""
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
# security.W021 asks for the preload directive. It commits the whole registrable domain to https
# in browsers' built-in lists, a decision that belongs to its owner, not to a default: the list's
# maintainers ask projects not to turn it on by default. DJANGO_HSTS_PRELOAD=true sends it.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "gateway",
]

MIDDLEWARE = [
    "gateway.api.middleware.api_responses",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's CSS and JS, no web server needed
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tollgate.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
ASGI_APPLICATION = "tollgate.asgi.application"

_sqlite_path = VAR_DIR / "tollgate.sqlite3"
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{_sqlite_path}"),
        conn_max_age=600,
        # A pooler in transaction mode (PgBouncer) hands each transaction to any server
        # connection: a cursor declared in one is gone in the next (docs/deploy.md).
        disable_server_side_cursors=env_bool("DATABASE_DISABLE_SERVER_SIDE_CURSORS", False),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite creates its file, not its folder
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the admin read while the ledger writer writes; IMMEDIATE avoids
        # "database is locked" on lock upgrades; the busy timeout rides out short write bursts.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # A file, not :memory:, so that end-to-end tests can share the test database with the
    # gateway process they start; one per test process, so that two runs never share one.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-tollgate-{os.getpid()}.sqlite3")}
else:
    # A database that does not answer must not hold the API's shared sync thread for long
    # (gateway.outage backs off after a failure): libpq's shortest connect timeout.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 2)
    # One test database per test process here too: two suites never share (and drop) one.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# collectstatic's target, optional in development; WhiteNoise warns on every start without it.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True  # serve from the apps' static folders: no collectstatic step

# --- Tollgate -----------------------------------------------------------------------------
TOLLGATE_CONFIG = env_str("TOLLGATE_CONFIG", str(BASE_DIR / "config.toml"))
TOLLGATE_AUTH_CACHE_SECONDS = env_float("TOLLGATE_AUTH_CACHE_SECONDS", 5.0)
"""How long a key lookup is cached in process: a revoked key stops working within this bound."""
TOLLGATE_LEDGER_FLUSH_SECONDS = env_float("TOLLGATE_LEDGER_FLUSH_SECONDS", 0.5)
"""Longest time a ledger row waits in memory before its batch is written."""
TOLLGATE_SHUTDOWN_GRACE_SECONDS = env_float("TOLLGATE_SHUTDOWN_GRACE_SECONDS", 25.0)
"""How long a stopping worker lets its requests run before it cuts them, recording each cut call
(gateway.drain): shorter than the server's own limit (uvicorn's --timeout-graceful-shutdown,
granian's --workers-kill-timeout)."""
TOLLGATE_MAX_BODY_BYTES = env_int("TOLLGATE_MAX_BODY_BYTES", 32 * 1024 * 1024)
"""Largest request body the API accepts (413 beyond): chat requests may carry images."""
DATA_UPLOAD_MAX_MEMORY_SIZE = TOLLGATE_MAX_BODY_BYTES
TOLLGATE_MAX_UPLOAD_BYTES = env_int("TOLLGATE_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
"""Largest file an upload endpoint (/v1/audio/transcriptions) accepts (413 beyond). Bodies of
upload endpoints are capped at this plus room for the form's other fields, not at
TOLLGATE_MAX_BODY_BYTES."""
TOLLGATE_MAX_JSON_DEPTH = env_int("TOLLGATE_MAX_JSON_DEPTH", 128)
"""Deepest JSON nesting a request body may have (400 beyond). Tool schemas nest to 64 and more."""
TOLLGATE_MAX_ITEMS = env_int("TOLLGATE_MAX_ITEMS", 10_000)
"""Most items any JSON array (or keys any object) of a request body may hold (400 beyond):
messages, tools, embedding inputs. Coding agents send hundreds of messages, not ten thousand."""
TOLLGATE_MAX_JSON_VALUES = env_int("TOLLGATE_MAX_JSON_VALUES", 50_000)
"""Most JSON values a request body may hold in all (400 beyond): bounds how long its parse holds
the event loop (~20 ms at the limit). A long coding session sends a few tens of thousands."""
TOLLGATE_MAX_HEADER_BYTES = env_int("TOLLGATE_MAX_HEADER_BYTES", 64 * 1024)
"""Largest total size of a request's headers, names and values (431 beyond)."""
TOLLGATE_LEDGER_DIR = Path(env_str("TOLLGATE_LEDGER_DIR", str(VAR_DIR / "ledger")))
"""The ledger's journal (every row, before its call's answer completes) and spool (rows the
database did not take), replayed by any worker (gateway.usage.ledger). Local to the machine: every
worker of one gateway must share it, two gateways must not."""
TOLLGATE_LEDGER_JOURNAL = env_bool("TOLLGATE_LEDGER_JOURNAL", True)
"""Off: a killed process loses the rows still queued (at most one flush interval)."""
TOLLGATE_LEDGER_FSYNC = env_bool("TOLLGATE_LEDGER_FSYNC", True)
"""The writer fsyncs the journal before each batch: a machine crash loses one flush interval."""
TOLLGATE_LEDGER_REPLAY_SECONDS = env_float("TOLLGATE_LEDGER_REPLAY_SECONDS", 2.0)
"""How often each writer probes a database that went away, and looks for files to replay."""
LEGACY_LEDGER_SPOOLS = [VAR_DIR / "ledger-spool", VAR_DIR / "ledger-spool.replaying"]
"""Where versions before the journal kept their spool: adopted and replayed at start."""
TOLLGATE_SECRET_KEY = env_str("TOLLGATE_SECRET_KEY", "")
"""Encrypts upstream keys stored in the database (gateway.upstream_keys.secrets). Required once
any exist."""
TOLLGATE_CREDENTIALS_REFRESH_SECONDS = env_float("TOLLGATE_CREDENTIALS_REFRESH_SECONDS", 5.0)
"""How often each gateway process re-reads the upstream keys (ProviderKey) from the database."""
TOLLGATE_RESPONSES_RETENTION_DAYS = env_int("TOLLGATE_RESPONSES_RETENTION_DAYS", 30)
"""How long stored responses of the Responses API are kept (a daily purge deletes older ones)."""
TOLLGATE_DEFAULT_RESERVE_TOKENS = env_int("TOLLGATE_DEFAULT_RESERVE_TOKENS", 4096)
"""Output tokens a budget reserves for a chat call that sets no max_tokens."""
REDIS_URL = env_str("REDIS_URL", "")
"""Rate-limit and budget counters shared by every gateway process; empty: in process memory."""
TOLLGATE_REDIS_FAILURE = env_choice("TOLLGATE_REDIS_FAILURE", ("open", "closed"))
"""While Redis is unreachable: ``open`` counts in process memory, ``closed`` answers 503."""
TOLLGATE_REDIS_TIMEOUT_SECONDS = env_float("TOLLGATE_REDIS_TIMEOUT_SECONDS", 0.5)
"""Connect and read timeout of each Redis operation: an outage must not stall calls."""
TOLLGATE_OUTAGE_LOG_SECONDS = env_float("TOLLGATE_OUTAGE_LOG_SECONDS", 10.0)
"""At most one log line per this interval about an unavailable database or Redis, and one
summary of failed authentications."""
TOLLGATE_AUTH_FAILURE_BURST = env_int("TOLLGATE_AUTH_FAILURE_BURST", 20)
"""Failed authentications a client address may make in a burst before it gets 429."""
TOLLGATE_AUTH_FAILURE_RATE = env_float("TOLLGATE_AUTH_FAILURE_RATE", 1.0)
"""Failed authentications per second a client address is allowed after its burst."""
TOLLGATE_METRICS = env_bool("TOLLGATE_METRICS", True)
"""Prometheus metrics (gateway.telemetry.metrics); off, calls pay nothing for them."""
TOLLGATE_METRICS_TOKEN = env_str("TOLLGATE_METRICS_TOKEN", "")
"""``GET /metrics`` on the API's port wants ``Authorization: Bearer <this>``; unset, it is not
served there (404)."""
TOLLGATE_METRICS_ADDR = env_address("TOLLGATE_METRICS_ADDR")
"""``host:port`` where one worker serves ``/metrics`` without a token (a private interface)."""
TOLLGATE_METRICS_TENANT_LABEL = env_bool("TOLLGATE_METRICS_TENANT_LABEL", False)
"""Requests, tokens and cost also by tenant (its name): one series per tenant and model."""
TOLLGATE_METRICS_DIR = Path(env_str("TOLLGATE_METRICS_DIR", str(VAR_DIR / "metrics")))
"""Where each worker keeps its metric values for the others to add up: local to the machine,
shared by every worker of one gateway and by no other gateway (as TOLLGATE_LEDGER_DIR)."""
# prometheus_client chooses its multi-process mode when it is imported, from this variable:
# the settings come first in every process.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(TOLLGATE_METRICS_DIR)

TOLLGATE_LOG_FORMAT = env_choice("TOLLGATE_LOG_FORMAT", ("text", "json"))
"""``text`` (for people, ``make run``) or ``json``: one JSON object per line for every record, the
gateway's, Django's and uvicorn's, exceptions included (``gateway.telemetry.logs``)."""
TOLLGATE_REQUEST_LOG = env_bool("TOLLGATE_REQUEST_LOG", True)
"""One line per API request on the ``tollgate.requests`` logger: who, which model, where to,
status, latency, tokens, cost; never a prompt, an answer, a header or a key."""
TOLLGATE_TRACES = not env_bool("OTEL_SDK_DISABLED", False) and bool(
    os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
)
"""A span per call, sent over OTLP/HTTP, when OpenTelemetry's standard endpoint variable is set
(``gateway.telemetry.traces``); otherwise nothing of OpenTelemetry is imported."""

LOG_FORMATTERS = {
    "text": {"()": "gateway.telemetry.logs.TextFormatter"},
    "json": {"()": "gateway.telemetry.logs.JsonFormatter"},
}
LOGGING_CONFIG = "gateway.telemetry.logs.configure_logging"
"""``LOGGING``, then the JSON formatter for the handlers uvicorn set up on its own loggers."""
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"console": LOG_FORMATTERS[TOLLGATE_LOG_FORMAT]},
    "filters": {"skip_api_responses": {"()": "tollgate.log_filters.SkipApiResponses"}},
    # One handler, on the root: every library's warnings come out in the same format. It holds
    # request lines back a moment, to write them several at a time (``gateway.telemetry.logs``).
    "handlers": {
        "console": {"class": "gateway.telemetry.logs.ConsoleHandler", "formatter": "console"}
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "tollgate": {"level": env_str("TOLLGATE_LOG_LEVEL", "INFO")},
        "tollgate.requests": {"level": "INFO"},  # switched by TOLLGATE_REQUEST_LOG alone
        "django": {"level": "WARNING"},
        "django.request": {"filters": ["skip_api_responses"]},
    },
}
