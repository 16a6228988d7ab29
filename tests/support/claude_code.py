"""Claude Code (Anthropic's coding agent, ``@anthropic-ai/claude-code`` on npm) for the end-to-end
tests, which run the real agent against the gateway's ``POST /v1/messages``
(tests/test_e2e_claude_code.py).

``install_claude_code()`` installs the pinned version with npm into ``var/node/`` (gitignored)
when it is not there yet, and returns the path of its ``claude`` binary (tests/support/npm_cli.py;
the package is a native binary for the platform, pulled in as an optional dependency); ``make
claude-code`` runs it (this file as a script). The ``claude_code_bin`` fixture installs it for a
test, or skips the test (fails it with ``CI=true``) when that cannot be done.

``run_claude(...)`` runs ``claude -p <prompt>`` non-interactively against the gateway and nothing
else: the gateway as ``ANTHROPIC_BASE_URL`` (the CLI appends ``/v1/messages``), the tenant key as
``ANTHROPIC_API_KEY`` (sent as ``x-api-key``), the model alias for every model slot the CLI knows
(main loop, the sonnet / opus / haiku / fable defaults, the small fast model, subagents), no
retries, telemetry, error reporting, update checks and every other non-essential request off, a
HOME and CLAUDE_CONFIG_DIR of its own, and HTTP(S) proxies at a closed local port for every host
but the gateway's. Permissions: ``--permission-mode dontAsk`` with ``--allowedTools "Bash(ls:*)
Read"``, so ``ls`` and file reads run without a prompt and anything else is refused. (Skipping
permissions altogether, ``--dangerously-skip-permissions`` or ``--permission-mode
bypassPermissions``, makes the CLI exit 1 when run as root unless IS_SANDBOX=1.)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: make claude-code

from support import npm_cli

CLAUDE_CODE_VERSION = "2.1.197"
CLAUDE_CODE = npm_cli.NpmCli(
    title="Claude Code",
    package="@anthropic-ai/claude-code",
    version=CLAUDE_CODE_VERSION,
    binary="claude",
    make_target="claude-code",
    home_variable="CLAUDE_CONFIG_DIR",
    reports_version=lambda stdout: stdout.split()[:1] == [CLAUDE_CODE_VERSION],  # 2.1.197 (Claude…
)
ALLOWED_TOOLS = "Bash(ls:*) Read"
MODEL_VARIABLES = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_DEFAULT_FABLE_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",  # the older name of the haiku slot, still read
    "CLAUDE_CODE_SUBAGENT_MODEL",
)
QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # the title request, growthbook, reports...
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",  # a failure shows at once, not after 10 backed-off retries
}


def install_claude_code() -> Path:
    """The ``claude`` binary of ``CLAUDE_CODE_VERSION``, installed with npm first if need be."""
    return npm_cli.install(CLAUDE_CODE)


@pytest.fixture(scope="session", name="claude_code_bin")
def claude_code_bin_fixture() -> Path:
    """The Claude Code binary; a test module imports this fixture for pytest to find it."""
    return npm_cli.available(CLAUDE_CODE)


def claude_environment(
    home: Path, gateway_base_url: str, api_key: str, model: str
) -> dict[str, str]:
    """Claude Code's whole environment: none of this process's keys or settings leak in."""
    return npm_cli.offline_environment(
        home,
        gateway_base_url,
        CLAUDE_CONFIG_DIR=str(home),
        ANTHROPIC_BASE_URL=gateway_base_url.rstrip("/"),
        ANTHROPIC_API_KEY=api_key,
        **dict.fromkeys(MODEL_VARIABLES, model),
        **QUIET,
    )


def run_claude(
    claude_bin: Path,
    gateway_base_url: str,
    api_key: str,
    model: str,
    prompt: str,
    workdir: Path,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``claude -p <prompt>`` in ``workdir`` against the gateway at ``gateway_base_url`` (no
    ``/v1``), as ``model``, with ``api_key``; stdout (the agent's last message, as text) and
    stderr (errors) captured. Past ``timeout`` seconds Claude Code is killed and the result has
    return code -9 and a last line of stderr that says so."""
    with tempfile.TemporaryDirectory(prefix="claude-home-") as home_dir:
        command = [
            str(claude_bin),
            "-p",
            prompt,
            "--output-format",
            "text",
            "--permission-mode",
            "dontAsk",
            "--allowedTools",
            ALLOWED_TOOLS,
            "--no-session-persistence",
        ]
        env = claude_environment(Path(home_dir), gateway_base_url, api_key, model)
        return npm_cli.run(command, workdir, env, timeout)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A Claude Code run for an assertion message: exit code, stdout, and the end of stderr."""
    return npm_cli.describe("claude -p", result)


if __name__ == "__main__":  # make claude-code
    npm_cli.main(CLAUDE_CODE)
