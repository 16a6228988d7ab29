"""What the tests of ``OpenAIToAnthropicStream`` share: OpenAI chunks to feed it, the events it
makes of them, and Anthropic's stream grammar asserted on those events, with the message they
describe rebuilt from them (to compare with the JSON answer of the same completion).
"""

from __future__ import annotations

import json
from typing import Any

from providers.anthropic.stream import OpenAIToAnthropicStream

Event = tuple[str, dict[str, Any]]


def oa_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A ``chat.completion.chunk`` of ``chatcmpl-abc`` with one choice."""
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-up",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


OA_USAGE = {
    "id": "chatcmpl-abc",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-up",
    "choices": [],
    "usage": {
        "prompt_tokens": 20,
        "completion_tokens": 9,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 8},
    },
}
"""The usage chunk ending a stream of ``oa_chunk``s."""
OA_USAGE_AS_ANTHROPIC = {
    "input_tokens": 12,
    "output_tokens": 9,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 8,
}
"""``OA_USAGE`` as an Anthropic ``usage``: input without the cached part."""


def to_anthropic_events(chunks: list[dict[str, Any]]) -> list[Event]:
    """Every event ``OpenAIToAnthropicStream`` makes of ``chunks``, its closing ones included."""
    translator = OpenAIToAnthropicStream("gpt-alias")
    events: list[Event] = []
    for item in chunks:
        events += translator.feed(item)
    return events + translator.finish()


DELTA_TYPES = {
    "text": ("text_delta",),
    "thinking": ("thinking_delta", "signature_delta"),
    "tool_use": ("input_json_delta",),
}
"""The deltas each type of content block may be given."""


def rebuilt_message(events: list[Event]) -> dict[str, Any]:
    """Assert Anthropic's stream grammar and rebuild the message the events describe.

    The grammar: ``message_start`` first, ``message_delta`` then ``message_stop`` last, each
    once; in between, content blocks 0, 1, 2, ... one at a time, each ``content_block_start``,
    deltas of its type, ``content_block_stop``; a thinking block's last delta is its
    ``signature_delta``. Each event's data names its type as the event does.
    """
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert (
        names.count("message_start")
        == names.count("message_delta")
        == names.count("message_stop")
        == 1
    )
    for name, data in events:
        assert data["type"] == name
    message = dict(events[0][1]["message"])
    message["content"] = []
    open_index: int | None = None
    arguments = ""
    last_delta = ""
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert data["index"] == len(message["content"]), "indices must be 0, 1, 2, ..."
            open_index = data["index"]
            message["content"].append(dict(data["content_block"]))
            arguments, last_delta = "", ""
        elif name == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
            block, block_delta = message["content"][open_index], data["delta"]
            last_delta = block_delta["type"]
            assert last_delta in DELTA_TYPES[block["type"]], (block["type"], last_delta)
            if last_delta == "text_delta":
                block["text"] += block_delta["text"]
            elif last_delta == "thinking_delta":
                block["thinking"] += block_delta["thinking"]
            elif last_delta == "signature_delta":
                block["signature"] = block_delta["signature"]
            else:
                arguments += block_delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == open_index
            block = message["content"][open_index]
            if block["type"] == "tool_use":
                block["input"] = json.loads(arguments or "{}")
            if block["type"] == "thinking":
                assert last_delta == "signature_delta", "a thinking block ends with its signature"
            open_index = None
    assert open_index is None, "every block started is stopped"
    final = events[-2][1]
    message["stop_reason"] = final["delta"]["stop_reason"]
    message["usage"] = final["usage"]
    return message
