"""The Codex harness (tests/support/codex.py) by itself, without the gateway: the pinned Codex CLI,
run by ``run_codex`` against a stand-in for ``POST /v1/responses``
(tests/support/responses_standin.py), does the agent's tool round trip. What it sends there is
what the gateway gets in tests/test_e2e_codex.py; the assertions below pin the parts a Responses
endpoint has to take (full history each turn, no stored responses)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.codex import (
    CODEX_VERSION,
    codex_bin_fixture,  # noqa: F401 - a fixture: codex_bin
    describe,
    run_codex,
)
from support.responses_standin import responses_standin

pytestmark = pytest.mark.e2e

PROBE = "codex-harness-probe.txt"
KEY = "sk-standin-key"


def test_codex_does_a_tool_round_trip_on_the_responses_endpoint(
    codex_bin: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / PROBE).write_text("probe\n")
    with responses_standin() as standin:
        result = run_codex(codex_bin, standin.base_url, KEY, "codex-x", "list the files", workdir)

    assert result.returncode == 0, describe(result)
    assert f"Done: {PROBE}" in result.stdout, describe(result)
    assert [(r.method, r.path) for r in standin.requests] == [("POST", "/v1/responses")] * 2
    first, second = (r.body for r in standin.requests)
    for request in standin.requests:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["accept"] == "text/event-stream"
        assert request.headers["originator"] == "codex_exec"
        assert f"codex_exec/{CODEX_VERSION}" in request.headers["user-agent"]
        assert "content-encoding" not in request.headers
    for body in (first, second):
        assert (body["model"], body["stream"], body["store"]) == ("codex-x", True, False)
        assert "previous_response_id" not in body
        assert "exec_command" in [tool.get("name") for tool in body["tools"]]
    # The second turn sends the whole history again: the first turn's input, the call, its result.
    call, output = second["input"][-2:]
    assert second["input"][:-2] == first["input"]
    assert first["input"][-1]["role"] == "user"
    assert (call["type"], call["name"], call["call_id"]) == (
        "function_call",
        "exec_command",
        "call_standin",
    )
    assert (output["type"], output["call_id"]) == ("function_call_output", "call_standin")
    assert output["output"].endswith(f"Output:\n{PROBE}\n")
    assert first["prompt_cache_key"] == second["prompt_cache_key"]
