"""The real Codex CLI (tests/support/codex.py pins its version) through the gateway's
``POST /v1/responses``, to a chat model on each wire format: the fake upstream's ``agent`` model
(tests/fake_agent.py) plays a tool round trip, Codex runs ``ls`` in a directory of the test's, and
the model's last answer quotes what ``ls`` printed. Real processes on 127.0.0.1: the fake
upstream, the gateway under uvicorn, Codex.

What Codex 0.171.0 does in a ``codex exec`` run (captured from it; tests/test_codex_harness.py
pins the main points against a stand-in):

- Requests: only ``POST {base_url}/responses`` (base_url is the provider's, ``<gateway>/v1``), one
  per model turn: here two, the tool call's turn and the answer's. No ``GET /v1/models``, no
  ``/v1/responses/compact``, no websocket (custom providers use HTTP). With the config run_codex
  writes, nothing else leaves the machine: no DNS lookup at all (seen with strace).
- Headers: ``authorization: Bearer <key>`` (from the provider's env_key), ``accept:
  text/event-stream``, ``content-type: application/json`` (the body is not compressed),
  ``accept-encoding: zstd,gzip``, ``originator: codex_exec``, ``user-agent: codex_exec/0.171.0
  (...)``, ``session-id``, ``thread-id``, ``x-client-request-id`` (all three the session id),
  ``x-codex-window-id``, ``x-codex-turn-metadata`` (JSON: ids, ``request_kind`` "turn" or
  "compaction", sandbox, model...) and ``x-codex-beta-features: remote_compaction_v2`` (sent to
  every provider, whether it compacts remotely or not).
- Body: ``model``, ``stream: true``, ``store: false``, ``input``, ``tools``, ``tool_choice:
  "auto"``, ``parallel_tool_calls: true``, ``reasoning: {"summary": "auto"}``, ``include:
  ["reasoning.encrypted_content"]``, ``prompt_cache_key`` (the session id, the same every turn)
  and ``client_metadata`` (the turn metadata again). No ``instructions``: Codex's system prompt is
  the first input item, a message of role ``developer``; then a developer message (skills), a
  user message (``<environment_context>``), and the user's prompt. Tools: functions in the
  Responses shape (``{"type": "function", "name", "description", "strict": false,
  "parameters"}``: exec_command, write_stdin, request_user_input, view_image, get_goal,
  create_goal, update_goal), a ``{"type": "namespace", "name": "multi_agent_v1", "tools": [...]}``
  of functions, and ``{"type": "web_search", "external_web_access": false}``.
- The second turn carries the whole history again (``store`` is false; no
  ``previous_response_id``): the first turn's input items unchanged, then the model's
  ``function_call`` item as it was received (``type``, ``name``, ``arguments``, ``call_id``, and
  ``id`` / ``status`` when the server sent them), then ``{"type": "function_call_output", "id":
  "fco_...", "call_id", "output": "<string>"}``. exec_command's output opens with a header,
  lines ``Chunk ID: ...``, ``Wall time: ...``, ``Process exited with code 0``, ``Original token
  count: N``, ``Output:``, and then what the command printed.
- What Codex needs back: an SSE stream in which every output item arrives in a
  ``response.output_item.done`` event (an item without one is ignored: no tool runs, and Codex
  exits 0 with an empty answer) and that ends with ``response.completed`` (its ``response.id``
  and ``usage``); without it Codex fails with "stream closed before response.completed".
  ``response.created``, ``output_item.added`` and ``output_text.delta`` are optional. A 404
  fails the run at once: ``ERROR: unexpected status 404 Not Found: <message>, url: ...``, exit 1.

Compaction, and ``POST /v1/responses/compact``: Codex 0.171.0 never calls that path (the string
is not in its binary; the header above names the v2 protocol, which has no such path). How it
compacts depends on the provider's name: for a provider named "openai" (or an Azure one) it
compacts remotely, sending an ordinary ``POST /v1/responses`` whose input ends with a
``{"type": "compaction_trigger"}`` item and expecting exactly one ``{"type": "compaction"}``
output item; an error there ends the run ("Error running remote compact task", exit 1), with no
fallback to local compaction. For any other provider, like run_codex's "Tollgate", it compacts
locally: an ordinary ``POST /v1/responses`` (``request_kind`` "compaction", no tools) whose last
input item is a user message "You are performing a CONTEXT CHECKPOINT COMPACTION...", and whose
answer's text becomes the summary. So the gateway needs no compact endpoint for Codex as
configured here; a deployment that names its provider "openai" would need ``compaction_trigger``
support on ``/v1/responses`` (not ``/responses/compact``). Seen by forcing compaction with
``-c model_auto_compact_token_limit=10`` against a recording stand-in; the source agrees
(openai/codex: ``codex-rs/core/src/compact_remote_v2.rs``, ``supports_remote_compaction``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.codex import (
    codex_bin_fixture,  # noqa: F401 - a fixture: codex_bin
    describe,
    run_codex,
)
from support.npm_cli import tail

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

PROMPT = "list the files here"
PROBE = "tollgate-codex-probe.txt"
# Provider names of this module's own: upstream health is shared through Redis.
OPENAI_PROVIDER, ANTHROPIC_PROVIDER = "codex-fake", "codex-fake-anthropic"
# The fake's usage: OpenAI prompt 11, completion 5; Anthropic input 11 + cache writes 4 + cache
# reads 3 (the ledger's prompt is all input), output 5.
CASES = {
    "codex-openai": (OPENAI_PROVIDER, 11),
    "codex-claude": (ANTHROPIC_PROVIDER, 18),
}


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None,
    django_db_blocker: Any,
    fake_upstream: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("codex")
    config = tmp / "codex.toml"
    config.write_text(f"""
[providers.{OPENAI_PROVIDER}]
type = "openai"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[providers.{ANTHROPIC_PROVIDER}]
type = "anthropic"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."codex-openai"]
provider = "{OPENAI_PROVIDER}"
upstream_model = "agent"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."codex-claude"]
provider = "{ANTHROPIC_PROVIDER}"
upstream_model = "agent"
input_per_mtok = 3.0
output_per_mtok = 15.0
""")
    server = start_gateway_with_config(tmp, config)
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.mark.parametrize("model", list(CASES))
def test_codex_runs_a_tool_round_trip_through_the_gateway(
    codex_bin: Path,
    gateway: GatewayServer,
    tenants: dict[str, TenantKey],
    tmp_path: Path,
    model: str,
) -> None:
    alice = tenants["alice"]
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / PROBE).write_text("probe\n")

    result = run_codex(codex_bin, gateway.base_url, alice.raw, model, PROMPT, workdir)

    failure = f"{describe(result)}\n--- gateway log (end) ---\n{tail(gateway.log_path.read_text())}"
    assert result.returncode == 0, failure
    assert re.search(rf"Done: {re.escape(PROBE)}", result.stdout), failure
    rows = wait_for_rows(2, tenant=alice.tenant, endpoint="responses")
    assert len(rows) >= 2, f"{len(rows)} ledger rows for endpoint responses\n{failure}"
    provider, prompt_tokens = CASES[model]
    for row in rows:
        assert (row.requested_model, row.provider, row.upstream_model) == (model, provider, "agent")
        assert (row.status_code, row.stream) == (200, True)
        assert (row.prompt_tokens, row.completion_tokens) == (prompt_tokens, 5)
    others = UsageRecord.objects.filter(endpoint="responses").exclude(tenant=alice.tenant)
    assert not others.exists()
