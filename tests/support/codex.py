"""Codex CLI (OpenAI's coding agent, ``@openai/codex`` on npm) for the end-to-end tests, which run
the real agent against the gateway (tests/test_e2e_codex.py).

``install_codex()`` installs the pinned version with npm into ``var/node/`` (gitignored) when it
is not there yet, and returns the path of its ``codex`` binary; ``make codex`` runs it (this file
as a script). ``run_codex(...)`` runs ``codex exec`` non-interactively against the gateway and
nothing else: a CODEX_HOME of its own whose config.toml declares the gateway as the one model
provider (Responses wire API), no approvals, a workspace-write sandbox, and analytics, feedback,
OpenTelemetry, update checks and the plugin marketplace off; HTTP(S) proxies point at a closed
local port for every host but the gateway's, so a request Codex would make anywhere else fails.

The ``codex_bin`` fixture installs Codex for a test, or skips it (fails it with ``CI=true``) when
that cannot be done. What Codex 0.171.0 sends, and what it needs back, is written down in
tests/test_e2e_codex.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CODEX_VERSION = "0.171.0"
CODEX_PACKAGE = f"@openai/codex@{CODEX_VERSION}"
ROOT = Path(__file__).resolve().parents[2]
CODEX_PREFIX = ROOT / "var" / "node" / f"codex-{CODEX_VERSION}"
INSTALLED_MARKER = ".installed"  # written once the binary answered --version
API_KEY_ENV = "TOLLGATE_API_KEY"
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class CodexUnavailable(RuntimeError):
    """Codex could not be installed (no npm, no registry, a broken package): why, in words."""


def install_codex(prefix: Path = CODEX_PREFIX) -> Path:
    """The ``codex`` binary of ``CODEX_VERSION`` under ``prefix``, installed with npm first if it
    is not there (or a previous install did not finish)."""
    binary = prefix / "node_modules" / ".bin" / "codex"
    if (prefix / INSTALLED_MARKER).exists() and binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise CodexUnavailable("npm is not on PATH (Codex is installed with Node.js 20's npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), "--no-save", "--no-audit", "--no-fund"]
    try:
        installed = subprocess.run(
            [*command, "--loglevel=error", CODEX_PACKAGE],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as exc:
        raise CodexUnavailable(f"npm install {CODEX_PACKAGE} took over 600 s") from exc
    if installed.returncode != 0:
        raise CodexUnavailable(f"npm install {CODEX_PACKAGE} failed: {tail(installed.stderr)}")
    with tempfile.TemporaryDirectory(prefix="codex-home-") as home:  # not the user's ~/.codex
        version = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CODEX_HOME": home},
        )
    if version.returncode != 0 or version.stdout.split()[-1:] != [CODEX_VERSION]:
        raise CodexUnavailable(
            f"{binary} --version said {version.stdout.strip() or tail(version.stderr)!r}, "
            f"expected codex-cli {CODEX_VERSION}"
        )
    (prefix / INSTALLED_MARKER).write_text(version.stdout)
    return binary


@pytest.fixture(scope="session", name="codex_bin")
def codex_bin_fixture() -> Path:
    """The Codex binary; a test module imports this fixture for pytest to find it."""
    try:
        return install_codex()
    except CodexUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Codex is not available, and CI=true: {exc}")
        pytest.skip(f"Codex is not available (make codex installs it): {exc}")


def codex_config(gateway_base_url: str, model: str) -> str:
    """config.toml: the gateway as the only model provider, and nothing that calls elsewhere.

    The provider's name is not "openai": Codex sends compaction requests to such a provider as
    remote compaction v2 (a ``compaction_trigger`` input item); to any other it sends ordinary
    Responses requests (local compaction). No retries: a failure shows at once."""
    base_url = gateway_base_url.rstrip("/") + "/v1"
    return f"""\
model = {json.dumps(model)}
model_provider = "tollgate"
approval_policy = "never"
sandbox_mode = "workspace-write"
check_for_update_on_startup = false

[model_providers.tollgate]
name = "Tollgate"
base_url = {json.dumps(base_url)}
env_key = "{API_KEY_ENV}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"

[features]
# On by default, it syncs the plugin marketplace at start: git ls-remote
# https://github.com/openai/plugins.git, then api.github.com and chatgpt.com.
plugins = false
"""


def codex_environment(home: Path, gateway_base_url: str, api_key: str) -> dict[str, str]:
    """Codex's whole environment: none of this process's keys or CODEX_* settings leak in."""
    gateway_host = urlsplit(gateway_base_url).hostname or "127.0.0.1"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "CODEX_HOME": str(home),
        "LANG": "C.UTF-8",
        API_KEY_ENV: api_key,
        "NO_PROXY": gateway_host,
        "no_proxy": gateway_host,
    }
    env.update(dict.fromkeys(PROXY_VARIABLES, CLOSED_PROXY))
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def run_codex(
    codex_bin: Path,
    gateway_base_url: str,
    api_key: str,
    model: str,
    prompt: str,
    workdir: Path,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``codex exec <prompt>`` in ``workdir`` against the gateway at ``gateway_base_url`` (no
    ``/v1``), as ``model``, with ``api_key``; stdout (the agent's last message) and stderr (the
    session: commands run, errors) captured. Past ``timeout`` seconds Codex is killed and the
    result has return code -9 and a last line of stderr that says so."""
    with tempfile.TemporaryDirectory(prefix="codex-home-") as home_dir:
        home = Path(home_dir)
        (home / "config.toml").write_text(codex_config(gateway_base_url, model))
        command = [
            str(codex_bin),
            "exec",
            "--strict-config",  # a config key this version does not know is an error
            "--skip-git-repo-check",
            "--color",
            "never",
            "--cd",
            str(workdir),
            prompt,
        ]
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=codex_environment(home, gateway_base_url, api_key),
            stdin=subprocess.DEVNULL,  # else it waits for more of the prompt on stdin
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: node, the native binary, commands
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            stderr += f"\n[run_codex: codex exec was killed after {timeout} s]\n"
            return subprocess.CompletedProcess(command, -signal.SIGKILL, stdout, stderr)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A Codex run for an assertion message: exit code, stdout, and the end of stderr."""
    return (
        f"codex exec exited {result.returncode}\n--- stdout ---\n{result.stdout.strip()}\n"
        f"--- stderr (end) ---\n{tail(result.stderr)}"
    )


if __name__ == "__main__":  # make codex
    try:
        path = install_codex()
    except CodexUnavailable as exc:
        sys.exit(f"Codex is not available: {exc}")
    print(f"{path.relative_to(ROOT)}: codex-cli {CODEX_VERSION}")
