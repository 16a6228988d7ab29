"""What Claude Code sends to ``POST /v1/messages``, translated for a model behind an OpenAI
upstream (``providers.anthropic.endpoint``), without I/O: each field it uses, as a table, then its
captured first request field by field, then junk in those fields.

Its tools and content blocks are in test_claude_code_blocks, the answers (reasoning as
``thinking`` blocks) in test_claude_code_answers.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.anthropic_shapes import (
    CLAUDE_CODE_FIRST_TURN,
    EPHEMERAL,
    HI,
    SERVER_TOOLS,
    anthropic_body,
    text,
)
from support.e2e import validate

from providers.anthropic.endpoint import anthropic_request_to_openai, reasoning_effort_of
from providers.errors import InvalidRequest


def translated(**fields: Any) -> dict[str, Any]:
    return anthropic_request_to_openai(anthropic_body(**fields))


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- system messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "messages"),
    [
        pytest.param(
            {
                "system": "Top.",
                "messages": [
                    HI,
                    {"role": "system", "content": "Mid."},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "more"},
                ],
            },
            [
                {"role": "system", "content": "Top."},
                HI,
                {"role": "system", "content": "Mid."},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "more"},
            ],
            id="a-string-in-the-middle-stays-in-order-after-the-top-level-one",
        ),
        pytest.param(
            {
                "messages": [
                    HI,
                    {
                        "role": "system",
                        "content": [text("One."), {**text("Two."), "cache_control": EPHEMERAL}],
                    },
                ]
            },
            [HI, {"role": "system", "content": "One.\nTwo."}],
            id="text-blocks-joined-their-cache_control-dropped",
        ),
        pytest.param(
            {"messages": [{"role": "system", "content": "First."}, HI]},
            [{"role": "system", "content": "First."}, HI],
            id="first-without-a-top-level-system",
        ),
        pytest.param(
            {"system": [{**text("Cached."), "cache_control": EPHEMERAL}]},
            [{"role": "system", "content": "Cached."}, HI],
            id="top-level-blocks-with-cache_control",
        ),
    ],
)
def test_system_messages_anywhere_are_kept_in_order(
    fields: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    assert translated(**fields)["messages"] == messages


# --- thinking and effort -> reasoning_effort -----------------------------------------------------


def enabled(budget: Any) -> dict[str, Any]:
    return {"type": "enabled", "budget_tokens": budget}


@pytest.mark.parametrize(
    ("thinking", "output_config", "effort"),
    [
        pytest.param(None, None, None, id="neither"),
        pytest.param({"type": "adaptive"}, None, None, id="adaptive-alone"),
        pytest.param({"type": "adaptive"}, {"effort": "high"}, "high", id="adaptive-effort-high"),
        pytest.param(None, {"effort": "low"}, "low", id="effort-low"),
        pytest.param(None, {"effort": "medium"}, "medium", id="effort-medium"),
        pytest.param(enabled(1024), None, "low", id="budget-1024"),
        pytest.param(enabled(4095), None, "low", id="budget-4095"),
        pytest.param(enabled(4096), None, "medium", id="budget-4096"),
        pytest.param(enabled(16383), None, "medium", id="budget-16383"),
        pytest.param(enabled(16384), None, "high", id="budget-16384"),
        pytest.param(enabled(31999), None, "high", id="budget-31999"),
        pytest.param(enabled(2000), {"effort": "high"}, "high", id="effort-wins-over-budget"),
        pytest.param(enabled(20000), {"effort": "low"}, "low", id="effort-wins-downwards"),
        pytest.param({"type": "disabled"}, None, None, id="disabled"),
        pytest.param({"type": "disabled"}, {"effort": "high"}, None, id="disabled-wins"),
        pytest.param(None, {"effort": "max"}, None, id="effort-max-ignored"),
        pytest.param(enabled(20000), {"effort": "max"}, "high", id="effort-max-budget-decides"),
        pytest.param(None, {"effort": "HIGH"}, None, id="effort-is-case-sensitive"),
        pytest.param(None, {"effort": 3}, None, id="effort-a-number"),
        pytest.param(None, {"effort": ["high"]}, None, id="effort-a-list"),
        pytest.param(None, "high", None, id="output_config-a-string"),
        pytest.param({"type": "enabled"}, None, None, id="enabled-without-budget"),
        pytest.param(enabled("big"), None, None, id="budget-a-string"),
        pytest.param(enabled(True), None, None, id="budget-a-bool"),
        pytest.param(enabled(-5), None, None, id="budget-negative"),
        pytest.param("adaptive", None, None, id="thinking-a-string"),
        pytest.param({"type": "whatever"}, {"effort": "medium"}, "medium", id="unknown-thinking"),
    ],
)
def test_thinking_and_effort_make_the_reasoning_effort(
    thinking: Any, output_config: Any, effort: str | None
) -> None:
    assert reasoning_effort_of(thinking, output_config) == effort
    fields = {"thinking": thinking, "output_config": output_config}
    result = translated(**{k: v for k, v in fields.items() if v is not None})
    assert result.get("reasoning_effort") == effort
    assert "thinking" not in result and "output_config" not in result


# --- fields with no OpenAI counterpart -----------------------------------------------------------


ANTHROPIC_ONLY = {
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "cache_control": EPHEMERAL,
    "container": "container_123",
    "mcp_servers": [{"type": "url", "url": "https://mcp.test", "name": "m"}],
    "service_tier": "standard_only",
    "betas": ["context-management-2025-06-27"],
    "top_k": 5,
    "inference_geo": "us",
    "anthropic_version": "2023-06-01",
}


@pytest.mark.parametrize(("name", "value"), ANTHROPIC_ONLY.items())
def test_anthropic_only_fields_are_dropped(name: str, value: Any) -> None:
    assert translated(**{name: value}) == {
        "model": "gpt-alias",
        "max_tokens": 100,
        "messages": [HI],
    }


def test_all_anthropic_only_fields_at_once_are_dropped() -> None:
    assert translated(**ANTHROPIC_ONLY) == {
        "model": "gpt-alias",
        "max_tokens": 100,
        "messages": [HI],
    }


# --- metadata.user_id -> user --------------------------------------------------------------------


CLAUDE_CODE_USER = CLAUDE_CODE_FIRST_TURN["metadata"]["user_id"]


@pytest.mark.parametrize(
    ("metadata", "user"),
    [
        pytest.param({"user_id": "u-1"}, "u-1", id="short"),
        pytest.param({"user_id": "x" * 64}, "x" * 64, id="64-characters"),
        pytest.param({"user_id": "x" * 65}, sha256("x" * 65), id="65-characters-hashed"),
        pytest.param({"user_id": CLAUDE_CODE_USER}, sha256(CLAUDE_CODE_USER), id="claude-code"),
        pytest.param({"user_id": ""}, None, id="empty"),
        pytest.param({"user_id": 42}, None, id="a-number"),
        pytest.param({"user_id": None}, None, id="null"),
        pytest.param({}, None, id="no-user_id"),
        pytest.param("u-1", None, id="metadata-a-string"),
    ],
)
def test_metadata_user_id_becomes_a_user_openai_accepts(metadata: Any, user: str | None) -> None:
    result = translated(metadata=metadata)
    assert result.get("user") == user
    assert "metadata" not in result
    if user is not None:
        assert len(user) <= 64


# --- the first request of a Claude Code session --------------------------------------------------


def test_claude_code_first_request_translates_field_by_field() -> None:
    """Regression: it was a 400, ``messages.1.role: must be 'user' or 'assistant'``."""
    original = copy.deepcopy(CLAUDE_CODE_FIRST_TURN)
    sent = anthropic_request_to_openai(CLAUDE_CODE_FIRST_TURN)
    assert original == CLAUDE_CODE_FIRST_TURN, "the client's body is left as it was"

    validate("CreateChatCompletionRequest", sent)
    system, first, middle = CLAUDE_CODE_FIRST_TURN["system"], *CLAUDE_CODE_FIRST_TURN["messages"]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
    assert sent["messages"][0] == {
        "role": "system",
        "content": "\n".join(block["text"] for block in system),
    }
    assert sent["messages"][1] == {
        "role": "user",
        "content": [{"type": "text", "text": block["text"]} for block in first["content"]],
    }, "the user's blocks, their cache_control dropped"
    assert sent["messages"][2] == {"role": "system", "content": middle["content"]}

    assert sent["reasoning_effort"] == "high", "output_config.effort"
    assert sent["user"] == sha256(CLAUDE_CODE_USER)
    assert sent["max_tokens"] == 32000
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "parameters": tool["input_schema"],
                "description": tool["description"],
            },
        }
        for tool in CLAUDE_CODE_FIRST_TURN["tools"]
    ]
    assert len(sent["tools"]) == 24
    assert set(sent) == {
        "model",
        "messages",
        "max_tokens",
        "user",
        "reasoning_effort",
        "stream",
        "stream_options",
        "tools",
    }, "no thinking, context_management, output_config nor metadata"


# --- junk in the fields Claude Code uses ---------------------------------------------------------


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
"""Anything JSON can carry."""


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten, junk otherwise: requests get past their first check."""
    return st.integers(0, 9).flatmap(lambda draw: junk if draw == 0 else valid)


def block(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A block of ``kind`` with ``fields`` (one may be missing) and junk extras."""
    extras = st.dictionaries(st.sampled_from(["cache_control", "citations", "title"]), junk)
    missing = st.sampled_from([*[None] * 9 * len(fields), *fields])  # one in ten
    return st.builds(
        lambda given, more, left_out: {
            "type": kind,
            **more,
            **{k: v for k, v in given.items() if k != left_out},
        },
        st.fixed_dictionaries(fields),
        extras,
        missing,
    )


sources = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["base64", "url", "text", "file", "content"]),
            "media_type": st.sampled_from(["image/png", "application/pdf", "text/plain"]) | junk,
            "data": st.text(max_size=8) | junk,
            "url": st.text(max_size=8) | junk,
        }
    ),
    junk,
)
texts = block("text", text=mostly(st.text(max_size=8)))
blocks = mostly(
    texts
    | block("image", source=sources)
    | block("document", source=sources, title=junk)
    | block("thinking", thinking=junk, signature=junk)
    | block("redacted_thinking", data=junk)
    | block("tool_use", id=mostly(st.text(max_size=4)), name=junk, input=mostly(st.just({})))
    | block(
        "tool_result",
        tool_use_id=mostly(st.text(max_size=4)),
        content=st.text(max_size=8) | st.lists(st.one_of(texts, block("image", source=sources))),
        is_error=junk,
    )
)
turns = st.fixed_dictionaries(
    {
        "role": mostly(st.sampled_from(["user", "assistant", "system"])),
        "content": mostly(st.text(max_size=8) | st.lists(blocks, max_size=3)),
    }
)
tools = block(
    "custom", name=mostly(st.text(min_size=1, max_size=6)), input_schema=mostly(st.just({}))
) | st.builds(
    lambda tool, extra: {**tool, **extra},
    st.sampled_from(SERVER_TOOLS),
    st.dictionaries(st.sampled_from(["cache_control", "defer_loading"]), junk),
)
fields = st.fixed_dictionaries(
    {
        "system": mostly(st.text(max_size=8) | st.lists(texts, max_size=2)),
        "thinking": mostly(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["enabled", "adaptive", "disabled"])},
                optional={"budget_tokens": mostly(st.integers(0, 2**20))},
            )
        ),
        "output_config": mostly(
            st.fixed_dictionaries({"effort": st.sampled_from(["low", "medium", "high", "max"])})
        ),
        "metadata": mostly(st.fixed_dictionaries({"user_id": mostly(st.text(max_size=80))})),
        "tools": mostly(st.lists(mostly(tools), max_size=3)),
        "tool_choice": mostly(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["auto", "any", "none", "tool"])},
                optional={
                    "name": st.sampled_from(["web_search", "bash", "f"]) | junk,
                    "disable_parallel_tool_use": junk,
                },
            )
        ),
    },
    optional={
        "context_management": junk,
        "cache_control": junk,
        "container": junk,
        "mcp_servers": junk,
        "service_tier": junk,
        "betas": junk,
    },
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=fields, turns=st.lists(turns, max_size=3))
def test_junk_in_these_fields_is_a_400_or_a_request_openai_can_take(
    fields: dict[str, Any], turns: list[Any]
) -> None:
    try:
        result = anthropic_request_to_openai(anthropic_body(messages=[HI, *turns], **fields))
    except InvalidRequest as error:
        assert error.status == 400 and error.param
        return
    assert result.get("reasoning_effort") in (None, "low", "medium", "high")
    user_id = result.get("user")
    assert user_id is None or (isinstance(user_id, str) and 0 < len(user_id) <= 64)
    for anthropic_only in ("system", "thinking", "output_config", "metadata", "context_management"):
        assert anthropic_only not in result
    assert all(m["role"] in ("system", "user", "assistant", "tool") for m in result["messages"])
    if "tool_choice" in result:
        assert result["tools"], "never a tool_choice without tools"
