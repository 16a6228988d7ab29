"""Codex CLI (OpenAI's coding agent, ``@openai/codex`` on npm) for the end-to-end tests, which run
the real agent against the gateway (tests/test_e2e_codex.py).

``install_codex()`` installs the pinned version with npm into ``var/node/`` (gitignored) when it
is not there yet, and returns the path of its ``codex`` binary (tests/support/npm_cli.py); ``make
codex`` runs it (this file as a script). ``run_codex(...)`` runs ``codex exec`` non-interactively
against the gateway and nothing else: a CODEX_HOME of its own whose config.toml declares the
gateway as the one model provider (Responses wire API), no approvals, a workspace-write sandbox,
and analytics, feedback, OpenTelemetry, update checks and the plugin marketplace off; HTTP(S)
proxies point at a closed local port for every host but the gateway's, so a request Codex would
make anywhere else fails.

The ``codex_bin`` fixture installs Codex for a test, or skips it (fails it with ``CI=true``) when
that cannot be done. What Codex 0.171.0 sends, and what it needs back, is written down in
tests/test_e2e_codex.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: make codex

from support import npm_cli

CODEX_VERSION = "0.171.0"
CODEX = npm_cli.NpmCli(
    title="Codex",
    package="@openai/codex",
    version=CODEX_VERSION,
    binary="codex",
    make_target="codex",
    home_variable="CODEX_HOME",
    reports_version=lambda stdout: stdout.split()[-1:] == [CODEX_VERSION],  # codex-cli 0.171.0
)
API_KEY_ENV = "TOLLGATE_API_KEY"


def install_codex() -> Path:
    """The ``codex`` binary of ``CODEX_VERSION``, installed with npm first if it is not there."""
    return npm_cli.install(CODEX)


@pytest.fixture(scope="session", name="codex_bin")
def codex_bin_fixture() -> Path:
    """The Codex binary; a test module imports this fixture for pytest to find it."""
    return npm_cli.available(CODEX)


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
    return npm_cli.offline_environment(
        home, gateway_base_url, CODEX_HOME=str(home), **{API_KEY_ENV: api_key}
    )


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
        return npm_cli.run(
            command, workdir, codex_environment(home, gateway_base_url, api_key), timeout
        )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A Codex run for an assertion message: exit code, stdout, and the end of stderr."""
    return npm_cli.describe("codex exec", result)


if __name__ == "__main__":  # make codex
    npm_cli.main(CODEX)
