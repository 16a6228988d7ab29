"""The production environment that docs/deploy.md documents (deploy/env.example read after
deploy/tollgate.service's own ``Environment=`` lines, as systemd does) passes ``manage.py check
--deploy`` without a warning, refuses to start without DJANGO_SECRET_KEY, and, served by the
unit's own uvicorn command, answers the probes and the API over plain http while the admin is
sent to https."""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, database_url, free_port, write_config

UNIT = ROOT / "deploy" / "tollgate.service"
ENV_FILE = ROOT / "deploy" / "env.example"
SECRETS = ("DJANGO_SECRET_KEY", "TOLLGATE_SECRET_KEY", "TOLLGATE_METRICS_TOKEN")
"""Empty in env.example, on purpose: filled here as an operator would."""
PLACES = (
    "DATABASE_URL",
    "REDIS_URL",
    "TOLLGATE_CONFIG",
    "TOLLGATE_VAR_DIR",
    "TOLLGATE_LEDGER_DIR",
    "TOLLGATE_METRICS_DIR",
)
"""Where things are on the production hosts: this machine's instead."""
PUBLIC_HOST = "gateway.example.com"
PROBE_HOST = "10.0.0.7:8000"
"""How a load balancer or the kubelet names the host it probes: by its address."""


def documented_environment() -> dict[str, str]:
    """The unit's ``Environment=`` lines, then env.example's assignments over them."""
    environment = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            environment[name] = value
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            environment[name] = value
    return environment


def production_environment(tmp: Path, database: str) -> dict[str, str]:
    """The documented environment, with its secrets filled in and its places on this machine;
    nothing inherited from the test process but PATH."""
    documented = documented_environment()
    assert set(SECRETS) | set(PLACES) <= set(documented), "env.example or the unit lost a line"
    assert all(documented[name] == "" for name in SECRETS), "env.example must ship no secret"
    (tmp / "metrics").mkdir(exist_ok=True)
    here = {
        "DATABASE_URL": database,
        "TOLLGATE_CONFIG": str(write_config(tmp / "config.toml", "http://unused.invalid")),
        "TOLLGATE_VAR_DIR": str(tmp / "var"),
        "TOLLGATE_LEDGER_DIR": str(tmp / "ledger"),
        "TOLLGATE_METRICS_DIR": str(tmp / "metrics"),
    }
    environment = {
        **documented,
        **{name: secrets.token_urlsafe(50) for name in SECRETS},
        **here,
        "PATH": os.environ["PATH"],
    }
    if redis := os.environ.get("REDIS_URL"):
        environment["REDIS_URL"] = redis
    else:  # no Redis here: the gateway then counts in process memory
        del environment["REDIS_URL"]
    return environment


def unit_command(directive: str) -> list[str]:
    """One of the unit's commands (``ExecStart``, ``ExecStartPre``), run by this virtualenv."""
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith(f"{directive}="))
    argv = shlex.split(line.removeprefix(f"{directive}="))
    program = Path(argv[0])
    assert program.parent == Path("/opt/tollgate/.venv/bin")
    if program.name == "python":
        return [sys.executable, *argv[1:]]
    return [sys.executable, "-m", program.name, *argv[1:]]


def server_command(port: int) -> list[str]:
    """The unit's ExecStart on this machine: 127.0.0.1 on a free port, two workers instead of
    four (a shared 2-core machine)."""
    argv = unit_command("ExecStart")
    here = {"--host": "127.0.0.1", "--port": str(port), "--workers": "2"}
    for index, arg in enumerate(argv[:-1]):
        if arg in here:
            argv[index + 1] = here.pop(arg)
    assert not here, f"the unit's ExecStart lost {here}"
    return argv


def run(environment: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_check_deploy_passes_with_the_documented_environment(tmp_path: Path) -> None:
    """The unit's ExecStartPre, held to warnings too."""
    environment = production_environment(tmp_path, f"sqlite:///{tmp_path}/check.sqlite3")
    argv = unit_command("ExecStartPre")
    assert argv[1:] == ["manage.py", "check", "--deploy"]
    checked = run(environment, [*argv, "--fail-level", "WARNING"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "System check identified no issues (1 silenced)." in checked.stdout
    assert "WARNING" not in checked.stderr


def test_check_deploy_fails_on_plain_http(tmp_path: Path) -> None:
    """The check above can fail: the same environment serving the admin over plain http."""
    environment = production_environment(tmp_path, f"sqlite:///{tmp_path}/check.sqlite3")
    environment["DJANGO_HTTPS"] = "off"
    checked = run(environment, [*unit_command("ExecStartPre"), "--fail-level", "WARNING"])
    assert checked.returncode == 1
    for warning in ("security.W008", "security.W012", "security.W016"):
        assert warning in checked.stderr


def test_without_django_secret_key_nothing_starts(tmp_path: Path) -> None:
    """env.example as shipped (its DJANGO_SECRET_KEY empty): the unit's check fails, so systemd
    never starts the server; started anyway, its workers refuse to start (and uvicorn's supervisor
    stops) and it never answers. Both say which variable to set."""
    environment = production_environment(tmp_path, f"sqlite:///{tmp_path}/check.sqlite3")
    environment["DJANGO_SECRET_KEY"] = ""
    message = "DJANGO_SECRET_KEY is not set: set it to a long random value"
    checked = run(environment, unit_command("ExecStartPre"))
    assert checked.returncode == 1
    assert "(tollgate.E002) " + message in checked.stderr
    port = free_port()
    log_path = tmp_path / "server.log"
    server = subprocess.Popen(
        server_command(port),
        cwd=ROOT,
        env=environment,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers are its children: stopped with it below
    )
    try:
        deadline = time.monotonic() + 30
        while log_path.read_text().count("startup failed: " + message) < 2:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        # uvicorn's supervisor then stops on its own, with exit status 0: why the unit's check
        # (ExecStartPre) is what shows systemd the start failed (docs/deploy.md).
        assert server.wait(timeout=30) == 0, log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # its workers, if the supervisor did not stop
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


def test_check_deploy_fails_on_a_broken_config(tmp_path: Path) -> None:
    """A config.toml a worker would refuse: the unit's check names the file and the key."""
    environment = production_environment(tmp_path, f"sqlite:///{tmp_path}/check.sqlite3")
    broken = tmp_path / "broken.toml"
    broken.write_text('[models.m]\nprovider = "nowhere"\n')
    environment["TOLLGATE_CONFIG"] = str(broken)
    checked = run(environment, unit_command("ExecStartPre"))
    assert checked.returncode == 1
    assert "(tollgate.E003) " in checked.stderr
    assert str(broken) in checked.stderr


@pytest.fixture
def production_server(
    django_db_setup: None, django_db_blocker: object, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The gateway as tollgate.service starts it, on the test database."""
    port = free_port()
    log_path = tmp_path / "gateway.log"
    process = subprocess.Popen(
        server_command(port),
        cwd=ROOT,
        env=production_environment(tmp_path, database_url()),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the gateway did not start: {log_path.read_text()}")
        try:
            httpx.get(base_url + "/healthz", timeout=1)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        # Both workers started: the SIGTERM below then stops two serving workers.
        if log_path.read_text().count("Application startup complete") >= 2:
            break
        time.sleep(0.1)
    yield base_url, process
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.e2e
def test_probes_and_api_answer_plain_http_the_admin_goes_to_https(
    production_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base_url, process = production_server
    with httpx.Client(base_url=base_url, timeout=10, follow_redirects=False) as client:
        # A probe over plain http, naming the host by its address: answered, not redirected.
        health = client.get("/healthz", headers={"Host": PROBE_HOST})
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = client.get("/readyz", headers={"Host": PROBE_HOST})
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ok"
        # The API is never redirected: its answer over http is its own (here: no key).
        models = client.get("/v1/models", headers={"Host": PROBE_HOST})
        assert models.status_code == 401
        assert models.json()["error"]["code"] == "invalid_api_key"
        # The admin over plain http goes to https, under its own name.
        admin = client.get("/admin/login/", headers={"Host": PUBLIC_HOST})
        assert admin.status_code == 301
        assert admin.headers["location"] == f"https://{PUBLIC_HOST}/admin/login/"
        # Through the TLS proxy: served, with HSTS and https-only cookies.
        proxied = client.get(
            "/admin/login/", headers={"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https"}
        )
        assert proxied.status_code == 200
        assert proxied.headers["strict-transport-security"] == (
            "max-age=31536000; includeSubDomains"
        )
        csrf_cookie = proxied.headers["set-cookie"]
        assert csrf_cookie.startswith("csrftoken=") and "; Secure" in csrf_cookie
        # The admin refuses a name it does not serve.
        assert client.get("/admin/login/", headers={"Host": PROBE_HOST}).status_code == 400
    # systemd's KillMode=mixed: SIGTERM to uvicorn's supervisor alone, which stops its workers.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
