"""Coding-agent CLIs from npm for the end-to-end tests that run a real agent against the gateway
(Codex: tests/support/codex.py; Claude Code: tests/support/claude_code.py): what their harnesses
share.

``install(cli)`` installs a pinned version with npm into ``var/node/<name>-<version>/``
(gitignored) once, and returns its binary: a marker file, written once ``<binary> --version``
named the pinned version, tells later runs that the install is complete. ``available(cli)`` is
the same for a test: it skips the test when the CLI cannot be installed, and fails it with
``CI=true``. ``offline_environment(...)`` is a CLI's whole environment, with HTTP(S) proxies at a
closed local port for every host but the gateway's, so a request it would make anywhere else
fails; ``run(...)`` runs it in its own process group, killed past a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLED_MARKER = ".installed"  # written once the binary answered --version
CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class CliUnavailable(RuntimeError):
    """A CLI could not be installed (no npm, no registry, a broken package): why, in words."""


@dataclass(frozen=True)
class NpmCli:
    """A CLI pinned to one version of an npm package."""

    title: str  # "Codex", in messages
    package: str  # "@openai/codex"
    version: str
    binary: str  # the command the package installs
    make_target: str  # the Makefile target that installs it
    home_variable: str  # where its --version may write state, set to a temporary directory
    reports_version: Callable[[str], bool]  # whether --version's stdout names ``version``

    @property
    def prefix(self) -> Path:
        return ROOT / "var" / "node" / f"{self.make_target}-{self.version}"

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


def install(cli: NpmCli) -> Path:
    """``cli``'s binary, installed with npm first if it is not there (or a previous install did
    not finish)."""
    binary = cli.prefix / "node_modules" / ".bin" / cli.binary
    if (cli.prefix / INSTALLED_MARKER).exists() and binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise CliUnavailable(f"npm is not on PATH ({cli.title} is installed with Node.js's npm)")
    cli.prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(cli.prefix), "--no-save", "--no-audit", "--no-fund"]
    try:
        installed = subprocess.run(
            [*command, "--loglevel=error", cli.spec], capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired as exc:
        raise CliUnavailable(f"npm install {cli.spec} took over 600 s") from exc
    if installed.returncode != 0:
        raise CliUnavailable(f"npm install {cli.spec} failed: {tail(installed.stderr)}")
    with tempfile.TemporaryDirectory(prefix=f"{cli.make_target}-home-") as home:  # not the user's
        version = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "HOME": home, cli.home_variable: home},
        )
    if version.returncode != 0 or not cli.reports_version(version.stdout):
        raise CliUnavailable(
            f"{binary} --version said {version.stdout.strip() or tail(version.stderr)!r}, "
            f"expected {cli.version}"
        )
    (cli.prefix / INSTALLED_MARKER).write_text(version.stdout)
    return binary


def available(cli: NpmCli) -> Path:
    """``install(cli)`` for a test: skipped when that fails (failed with ``CI=true``)."""
    try:
        return install(cli)
    except CliUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{cli.title} is not available, and CI=true: {exc}")
        pytest.skip(f"{cli.title} is not available (make {cli.make_target} installs it): {exc}")


def main(cli: NpmCli) -> None:
    """The harness module as a script (``make codex``, ``make claude-code``): install, or exit
    with the reason."""
    try:
        path = install(cli)
    except CliUnavailable as exc:
        raise SystemExit(f"{cli.title} is not available: {exc}") from exc
    print(f"{path.relative_to(ROOT)}: {cli.spec}")


def offline_environment(home: Path, gateway_base_url: str, **variables: str) -> dict[str, str]:
    """A CLI's whole environment: PATH, a HOME of its own, ``variables``, and proxies that refuse
    every host but the gateway's. None of this process's keys or settings leak in."""
    gateway_host = urlsplit(gateway_base_url).hostname or "127.0.0.1"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        **variables,
        "NO_PROXY": gateway_host,
        "no_proxy": gateway_host,
    }
    env.update(dict.fromkeys(PROXY_VARIABLES, CLOSED_PROXY))
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def run(
    command: list[str], workdir: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``command`` in ``workdir`` with no stdin, its stdout and stderr captured. Past ``timeout``
    seconds its whole process group is killed, and the result has return code -9 and a last line
    of stderr that says so."""
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=dict(env),
        stdin=subprocess.DEVNULL,  # else the CLI waits for more of the prompt on stdin
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: node, native binaries, commands it runs
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[{Path(command[0]).name} was killed after {timeout} s]\n"
        return subprocess.CompletedProcess(command, -signal.SIGKILL, stdout, stderr)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def describe(title: str, result: subprocess.CompletedProcess[str]) -> str:
    """A CLI run for an assertion message: exit code, stdout, and the end of stderr."""
    return (
        f"{title} exited {result.returncode}\n--- stdout ---\n{result.stdout.strip()}\n"
        f"--- stderr (end) ---\n{tail(result.stderr)}"
    )
