"""A lone half of a surrogate pair, in a request or in an upstream's answer, is read as U+FFFD.

JavaScript's ``JSON.stringify`` writes a lone surrogate as an escape, and Claude Code cuts a long
tool result by its JavaScript length, which can split an emoji: from then on every call of the
session carries ``"\\ud83d"`` alone, and Anthropic's API answers each one 400 ("no low surrogate
in string"; anthropics/claude-code#1939 and its many duplicates). orjson refuses it too: the
gateway answered 400 ``invalid_json``, and 502 to an upstream answer holding one.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from support.inprocess import ANTHROPIC_PATH, answer_everything, api_client

from conftest import TenantKey
from providers import json_text

LONE_HIGH = rb"\ud83d"
REPLACEMENT = "\ufffd"


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (rb'{"a": "cut \ud83d"}', f"cut {REPLACEMENT}"),
        (rb'{"a": "\ude00 after"}', f"{REPLACEMENT} after"),
        (rb'{"a": "\ud83d\ude00"}', "\U0001f600"),  # a whole pair is one character
        (rb'{"a": "\ud83d\ud83d\ude00"}', f"{REPLACEMENT}\U0001f600"),
        (rb'{"a": "\ud83d\ud83d"}', REPLACEMENT * 2),
        (rb'{"a": "\\ud800 \ud800"}', f"\\ud800 {REPLACEMENT}"),  # an escaped backslash, text
        (rb'{"a": "\\\ud800"}', f"\\{REPLACEMENT}"),  # an escaped backslash, then an escape
        (rb'{"a": "\\ud83d\udc00"}', f"\\ud83d{REPLACEMENT}"),  # text, then a lone low half
    ],
    ids=[
        "high",
        "low",
        "pair",
        "high-then-pair",
        "two-highs",
        "escaped-backslash",
        "backslash-then-lone",
        "text-then-lone-low",
    ],
)
def test_a_lone_surrogate_reads_as_the_replacement_character(raw: bytes, read: str) -> None:
    assert json_text.loads(raw) == {"a": read}


@pytest.mark.parametrize(
    "raw",
    [
        rb'{"a": "\ud83d',
        b'{"a": 1',
        b"\xff",
        b"",
        b'{"a": "latin-1 \xe9"}',  # not UTF-8: no JavaScript program writes it
        b'{"a": "' + rb"\ud83dx" * (json_text.MOST_ESCAPES + 1) + b'"}',  # too many to look at
    ],
    ids=["cut", "unfinished", "binary", "empty", "not-utf8", "too-many"],
)
def test_a_body_still_bad_after_mending_is_refused_as_orjson_refused_it(raw: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        json_text.loads(raw)


def test_as_many_lone_halves_as_are_looked_at_are_mended() -> None:
    raw = b'{"a": "' + rb"\ud83dx" * json_text.MOST_ESCAPES + b'"}'
    assert json_text.loads(raw) == {"a": f"{REPLACEMENT}x" * json_text.MOST_ESCAPES}


def claude_code_turns() -> list[dict[str, Any]]:
    """A Read whose result was cut between the halves of an emoji."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a.md"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "CUT_HERE"}
    return [
        {"role": "user", "content": "read a.md"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]


def with_lone_surrogate(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body).replace(b"CUT_HERE", b"notes " + LONE_HIGH)


@pytest.mark.parametrize("model", ["claude-media", "gpt-test"], ids=["anthropic", "translated"])
async def test_a_claude_code_session_with_a_cut_emoji_goes_on(
    tenants: dict[str, TenantKey], gateway_runtime: Any, model: str
) -> None:
    """The request is answered, and its upstream is sent U+FFFD where the half was."""
    sent: list[bytes] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return answer_everything(request)

    gateway_runtime(upstream)
    body = {"model": model, "max_tokens": 10, "messages": claude_code_turns()}
    async with api_client() as client:
        answer = await client.post(
            ANTHROPIC_PATH,
            content=with_lone_surrogate(body),
            headers={"x-api-key": tenants["alice"].raw, "content-type": "application/json"},
        )
    assert answer.status_code == 200, answer.text
    assert LONE_HIGH not in sent[0]
    assert f"notes {REPLACEMENT}".encode() in sent[0]


def answer_with_lone_surrogate(request: httpx.Request) -> httpx.Response:
    """An OpenAI-compatible upstream whose text ends between the halves of an emoji (a server
    in JavaScript that cut it at ``max_tokens``, say), streamed or not."""
    answer = answer_everything(request)
    raw = answer.read().replace(b'"hi"', b'"hi ' + LONE_HIGH + b'"')
    return httpx.Response(answer.status_code, content=raw, headers=answer.headers)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_upstream_answer_with_a_cut_emoji_is_translated_not_a_502(
    tenants: dict[str, TenantKey], gateway_runtime: Any, stream: bool
) -> None:
    """Claude Code on a model behind an OpenAI-compatible backend: the chat answer, translated
    to a message, says U+FFFD where the half was (it was a 502, or a stream cut short)."""
    gateway_runtime(answer_with_lone_surrogate)
    body = {
        "model": "gpt-test",
        "max_tokens": 10,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    }
    async with api_client() as client:
        answer = await client.post(
            ANTHROPIC_PATH, json=body, headers={"x-api-key": tenants["alice"].raw}
        )
    assert answer.status_code == 200, answer.text
    if stream:
        assert b"event: message_stop" in answer.content, answer.text
        assert b"event: error" not in answer.content
        assert f"hi {REPLACEMENT}" in answer.text
    else:
        assert answer.json()["content"][0]["text"] == f"hi {REPLACEMENT}"


def test_json_text_inside_a_string_is_mended_alike() -> None:
    """A tool call's ``arguments``: JSON text, decoded from the body into a ``str``."""
    assert json_text.loads('{"path": "cut \\ud83d"}') == {"path": f"cut {REPLACEMENT}"}


CUT_ARGUMENTS = '{"path": "notes \\ud83d"}'
"""A tool call's arguments as a JavaScript agent writes them: ``JSON.stringify`` of a path cut
inside an emoji (the escape is text inside the ``arguments`` string)."""


async def test_a_chat_history_whose_tool_call_arguments_hold_a_cut_emoji_goes_on(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """A chat client's history, translated to Anthropic: the arguments become the tool_use
    block's ``input`` object, with U+FFFD where the half was (it was a 400: "The tool call's
    arguments are not a valid JSON object")."""
    sent: list[bytes] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return answer_everything(request)

    gateway_runtime(upstream)
    function = {"name": "read", "arguments": CUT_ARGUMENTS}
    call = {"id": "call_1", "type": "function", "function": function}
    messages = [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    body = {"model": "claude-media", "max_tokens": 10, "messages": messages}
    async with api_client() as client:
        answer = await client.post(
            "/v1/chat/completions", json=body, headers={"x-api-key": tenants["alice"].raw}
        )
    assert answer.status_code == 200, answer.text
    tool_use = orjson.loads(sent[0])["messages"][1]["content"][0]
    assert tool_use["input"] == {"path": f"notes {REPLACEMENT}"}


async def test_an_upstream_tool_call_with_a_cut_emoji_is_translated_not_a_502(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    """Claude Code on a model behind an OpenAI-compatible backend that calls a tool with such
    arguments: the message's tool_use ``input`` says U+FFFD (it was a 502, "The model returned
    tool call arguments that are not JSON")."""

    def upstream(request: httpx.Request) -> httpx.Response:
        answer = answer_everything(request)
        completion = answer.json()
        function = {"name": "read", "arguments": CUT_ARGUMENTS}
        tool_call = {"id": "call_1", "type": "function", "function": function}
        completion["choices"][0]["message"] = {"role": "assistant", "tool_calls": [tool_call]}
        completion["choices"][0]["finish_reason"] = "tool_calls"
        return httpx.Response(200, json=completion)

    gateway_runtime(upstream)
    body = {"model": "gpt-test", "max_tokens": 10, "messages": [{"role": "user", "content": "go"}]}
    async with api_client() as client:
        answer = await client.post(
            ANTHROPIC_PATH, json=body, headers={"x-api-key": tenants["alice"].raw}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["input"] == {"path": f"notes {REPLACEMENT}"}
