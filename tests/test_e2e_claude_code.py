"""The real Claude Code CLI (tests/support/claude_code.py pins its version) through the gateway's
``POST /v1/messages``, to a model on each wire format: the fake upstream's ``claude-agent`` model
(tests/fake_agent.py) plays a tool round trip, Claude Code runs ``ls`` with its Bash tool in a
directory of the test's, and the model's last answer quotes what ``ls`` printed. Real processes on
127.0.0.1: the fake upstream, the gateway under uvicorn, Claude Code.

What Claude Code 2.1.197 does in a ``claude -p`` run, as run_claude sets it up (captured from it
by a recording server in front of the fake, and with strace):

- Requests: only ``POST {ANTHROPIC_BASE_URL}/v1/messages?beta=true``, one per model turn: here
  two, the tool call's turn and the answer's, both ``stream: true``. No ``GET /v1/models``, no
  ``/v1/messages/count_tokens``, nothing else on the network (one TCP connection, the gateway's).
  Without CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC it first asks the same model for a session
  title (a request with no tools, ``output_config.format`` a JSON schema, beta
  ``structured-outputs-2025-12-15``), and tries six connections elsewhere (through the closed
  proxy).
- Headers: ``x-api-key: <ANTHROPIC_API_KEY>``, ``anthropic-version: 2023-06-01``,
  ``anthropic-beta: claude-code-20250219, interleaved-thinking-2025-05-14,
  thinking-token-count-2026-05-13, context-management-2025-06-27,
  prompt-caching-scope-2026-01-05, mid-conversation-system-2026-04-07, effort-2025-11-24``,
  ``x-claude-code-session-id`` (the same for every request of the run; the gateway's routing
  keeps a session on one deployment by it), ``x-app: cli``, ``user-agent: claude-cli/2.1.197
  (external, sdk-cli)``, ``anthropic-dangerous-direct-browser-access: true`` and the SDK's
  ``x-stainless-*`` ones.
- Body: ``model``, ``max_tokens`` 32000, ``stream``, ``thinking: {"type": "adaptive"}``,
  ``context_management`` (``clear_thinking_20251015``), ``output_config: {"effort": "high"}``,
  ``metadata.user_id`` (a JSON string: device id, session id), ``system`` as text blocks (a
  billing header line first), 24 tools (Bash, Read, Edit, Write, Agent, Task*, WebFetch...), and
  ``messages``: the user's prompt (after a system-reminder text block), then a message of role
  ``system`` (the agent types and skills; beta ``mid-conversation-system-2026-04-07``). The second
  turn adds the assistant's ``tool_use`` block as it was received and a user message with the
  ``tool_result`` (``content``: what ``ls`` printed, a string; ``is_error``; ``cache_control``).

A model routed to an OpenAI-compatible backend gets all of this translated to a chat request,
which today stops at the ``system`` message in the middle: 400 "messages.1.role: must be 'user'
or 'assistant'" (the translation is being taught that message on another branch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.anthropic_e2e import assert_claude_usage, assert_gpt_usage
from support.claude_code import (
    claude_code_bin_fixture,  # noqa: F401 - a fixture: claude_code_bin
    describe,
    run_claude,
)
from support.npm_cli import tail

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

PROMPT = "list the files here"
PROBE = "hello.txt"
# Provider names of this module's own: upstream health is shared through Redis.
ANTHROPIC_PROVIDER, OPENAI_PROVIDER = "cc-fake", "cc-fake-openai"
ANTHROPIC_MODEL, OPENAI_MODEL = "cc-claude", "cc-openai"
UPSTREAM_MODEL = "claude-agent"
HELLO = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None,
    django_db_blocker: Any,
    fake_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    """The gateway with one alias on each wire format, priced as the Anthropic suites price
    claude-* and gpt-test (tests/support/anthropic_e2e.py), so their usage assertions apply."""
    tmp = tmp_path_factory.mktemp("claude-code")
    config = tmp / "claude-code.toml"
    config.write_text(f"""
[providers.{ANTHROPIC_PROVIDER}]
type = "anthropic"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[providers.{OPENAI_PROVIDER}]
type = "openai"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."{ANTHROPIC_MODEL}"]
provider = "{ANTHROPIC_PROVIDER}"
upstream_model = "{UPSTREAM_MODEL}"
input_per_mtok = 3.0
output_per_mtok = 15.0
cache_read_per_mtok = 0.3
cache_write_per_mtok = 3.75

[models."{OPENAI_MODEL}"]
provider = "{OPENAI_PROVIDER}"
upstream_model = "{UPSTREAM_MODEL}"
input_per_mtok = 1.0
output_per_mtok = 2.0
cache_read_per_mtok = 0.5
""")
    server = start_gateway_with_config(tmp, config)
    yield server
    if server.process.poll() is None:
        server.stop()


def settle(gateway: GatewayServer, who: TenantKey) -> None:
    """One call as ``who``, waited for in the ledger: every row queued before it is written."""
    response = httpx.post(
        gateway.base_url + "/v1/messages",
        headers={"x-api-key": who.raw, "anthropic-version": "2023-06-01"},
        json={"model": ANTHROPIC_MODEL, "max_tokens": 16, "messages": [HELLO]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert len(wait_for_rows(1, request_id=response.headers["request-id"])) == 1


def run_in_project(
    claude_bin: Path,
    gateway: GatewayServer,
    tenants: dict[str, TenantKey],
    who: str,
    model: str,
    tmp_path: Path,
) -> list[UsageRecord]:
    """``claude -p "list the files here"`` as the tenant ``who`` in a directory holding PROBE,
    which must answer ``Done: <what ls printed>``; the ledger rows of ``who`` on ``messages``,
    exactly two (one per turn), checked for what both turns share (the model, status 200,
    streamed, usage as reported). No other tenant has a row but charlie's ``settle``."""
    caller = tenants[who]
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / PROBE).write_text("probe\n")

    result = run_claude(claude_bin, gateway.base_url, caller.raw, model, PROMPT, workdir)

    def failure() -> str:
        ledger = wait_for_rows(1, timeout=2, tenant=caller.tenant, endpoint="messages")
        return (
            f"{describe(result)}\n--- ledger rows of {who} on messages ---\n"
            + "".join(
                f"{row.requested_model} -> {row.provider}/{row.upstream_model}: status "
                f"{row.status_code} {row.error_type} stream={row.stream} prompt="
                f"{row.prompt_tokens} completion={row.completion_tokens}\n"
                for row in ledger
            )
            + ("" if ledger else "(none)\n")
            + f"--- gateway log (end) ---\n{tail(gateway.log_path.read_text())}"
        )

    assert result.returncode == 0, failure()
    assert f"Done: {PROBE}" in result.stdout, failure()
    settle(gateway, tenants["charlie"])
    rows = list(UsageRecord.objects.filter(tenant=caller.tenant).order_by("id"))
    assert len(rows) == 2, f"{len(rows)} ledger rows, expected 2 (one per turn)\n{failure()}"
    for row in rows:
        assert (row.endpoint, row.api_key_id) == ("messages", caller.key.pk)
        assert (row.requested_model, row.upstream_model) == (model, UPSTREAM_MODEL)
        assert (row.status_code, row.error_type, row.stream) == (200, "", True), failure()
        assert row.usage_estimated is False
    assert UsageRecord.objects.exclude(tenant=caller.tenant).count() == 1  # charlie's settle
    return rows


def test_claude_code_runs_a_tool_round_trip_on_a_model_routed_to_anthropic(
    claude_code_bin: Path, gateway: GatewayServer, tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    rows = run_in_project(claude_code_bin, gateway, tenants, "alice", ANTHROPIC_MODEL, tmp_path)

    for row in rows:
        assert row.provider == ANTHROPIC_PROVIDER
        assert_claude_usage(row)


def test_claude_code_runs_a_tool_round_trip_on_a_model_routed_to_an_openai_backend(
    claude_code_bin: Path, gateway: GatewayServer, tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    """Fails today: the translation to a chat request refuses Claude Code's mid-conversation
    ``system`` message (400 "messages.1.role: must be 'user' or 'assistant'")."""
    rows = run_in_project(claude_code_bin, gateway, tenants, "bob", OPENAI_MODEL, tmp_path)

    for row in rows:
        assert row.provider == OPENAI_PROVIDER
        assert_gpt_usage(row)
