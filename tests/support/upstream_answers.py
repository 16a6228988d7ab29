"""Upstream answers for tests/test_fuzz_upstream.py: a valid answer of each dialect the gateway
reads (chat completions and their chunks, Anthropic's messages and events, Responses and their
events, embeddings, images, transcriptions, token counts, stored responses), and hypothesis
strategies that break them: a part missing or of another type, events dropped, repeated, renamed,
cut short or not JSON, error statuses with bodies of any kind, transport failures (no answer at
all, or one cut off part-way by a timeout or a broken connection), and answers left hanging."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st

# --- what a valid upstream answers ----------------------------------------------------------------

USAGE = {
    "prompt_tokens": 3,
    "completion_tokens": 2,
    "total_tokens": 5,
    "prompt_tokens_details": {"cached_tokens": 1},
    "completion_tokens_details": {"reasoning_tokens": 1},
}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "hi",
                "reasoning_content": "hm",
                "tool_calls": [TOOL_CALL],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": USAGE,
}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {**COMPLETION, "object": "chat.completion.chunk", "choices": [choice], "usage": None}


DONE = b"data: [DONE]\n\n"
Event = tuple[str | None, Any] | bytes
"""One SSE event: its name (or None) and its data, encoded as JSON; or raw bytes."""
CHUNKS: list[Event] = [
    (None, chunk({"role": "assistant", "content": ""})),
    (None, chunk({"reasoning_content": "hm"})),
    (None, chunk({"content": "hi"})),
    (None, chunk({"tool_calls": [{"index": 0, **TOOL_CALL, "function": {"name": "f"}}]})),
    (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]})),
    (None, chunk({}, "tool_calls")),
    (None, {**chunk({}), "choices": [], "usage": USAGE}),
    DONE,
]

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [
        {"type": "thinking", "thinking": "hm", "signature": "s"},
        {"type": "text", "text": "hi"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 3,
        "output_tokens": 2,
        "cache_read_input_tokens": 1,
        "cache_creation_input_tokens": 1,
    },
}


def anthropic(kind: str, **data: Any) -> Event:
    return (kind, {"type": kind, **data})


MESSAGE_EVENTS: list[Event] = [
    anthropic(
        "message_start",
        message={**MESSAGE, "content": [], "stop_reason": None, "usage": {"input_tokens": 3}},
    ),
    anthropic("ping"),
    anthropic("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
    anthropic("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hm"}),
    anthropic("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "s"}),
    anthropic("content_block_stop", index=0),
    anthropic("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    anthropic("content_block_delta", index=1, delta={"type": "text_delta", "text": "hi"}),
    anthropic("content_block_stop", index=1),
    anthropic(
        "content_block_start",
        index=2,
        content_block={"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    ),
    anthropic(
        "content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": "{}"}
    ),
    anthropic("content_block_stop", index=2),
    anthropic(
        "message_delta",
        delta={"stop_reason": "tool_use", "stop_sequence": None},
        usage={"output_tokens": 2},
    ),
    anthropic("message_stop"),
]

RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "m",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "f",
            "arguments": "{}",
        },
    ],
    "usage": {
        "input_tokens": 3,
        "output_tokens": 2,
        "total_tokens": 5,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens_details": {"reasoning_tokens": 1},
    },
}
RESPONSE_EVENTS: list[Event] = [
    anthropic(
        "response.created",
        response={**RESPONSE, "status": "in_progress", "output": [], "usage": None},
    ),
    anthropic("response.output_item.added", output_index=0, item=RESPONSE["output"][0]),  # type: ignore[index]
    anthropic("response.output_text.delta", item_id="msg_1", output_index=0, delta="hi"),
    anthropic("response.output_text.done", item_id="msg_1", output_index=0, text="hi"),
    anthropic("response.completed", response=RESPONSE),
]

EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "m",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
IMAGES = {
    "created": 1,
    "data": [{"b64_json": "AA=="}],
    "size": "1024x1024",
    "quality": "hd",
    "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
}
TRANSCRIPTION = {"text": "hi", "duration": 1.5, "usage": {"type": "duration", "seconds": 2}}
TOKEN_COUNT = {"input_tokens": 3}
INPUT_ITEMS = {
    "object": "list",
    "data": [{"type": "message", "id": "msg_0", "role": "user", "content": []}],
    "first_id": "msg_0",
    "last_id": "msg_0",
    "has_more": False,
}
DELETED = {"id": "resp_1", "object": "response", "deleted": True}

# --- what goes wrong in it ------------------------------------------------------------------------

ODD_VALUES: list[Any] = [None, "", "12", "x", 1.5, -1, 0, True, False, 2**63, 10**30, -(2**70)]
odd: st.SearchStrategy[Any] = st.sampled_from(
    [*ODD_VALUES, "x\x00", float("inf"), [], {}, [1], ["x"], [None], [{}], {"a": 1}, {"type": 7}]
) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
"""A value where another belongs: text for a count, a list for an object, huge numbers, text with
a NUL (which PostgreSQL's text and JSON refuse)..."""
DELETE = object()


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in ``document``: its keys and indexes, however deep."""
    if prefix:
        yield prefix
    if isinstance(document, dict | list):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, value in items:
            yield from paths(value, (*prefix, key))


def changed(document: Any, path: tuple[Any, ...], value: Any) -> None:
    """``document`` with the value at ``path`` replaced by ``value`` (or removed: DELETE)."""
    *parents, last = path
    for key in parents:
        try:
            document = document[key]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(document, list) and not (isinstance(last, int) and last < len(document)):
        return
    if value is DELETE and isinstance(document, dict):
        document.pop(last, None)
    elif value is DELETE and isinstance(document, list):
        del document[last]
    elif isinstance(document, dict | list):
        document[last] = copy.deepcopy(value)  # a value of its own: a later change may go inside


def wrong_in(base: Any, most: int = 2) -> st.SearchStrategy[Any]:
    """``base`` (a JSON document), with up to ``most`` of its parts replaced or removed."""
    places = list(paths(base))
    where = st.integers(0, len(places) - 1)
    changes = st.lists(st.tuples(where, odd | st.just(DELETE)), max_size=most)

    def apply(edits: list[tuple[int, Any]]) -> Any:
        document = copy.deepcopy(base)
        for place, value in edits:
            changed(document, places[place], value)
        return document

    return changes.map(apply)


CUTS: list[type[httpx.TransportError]] = [
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.RemoteProtocolError,
]
"""What cuts an answer off after its headers: a reset, a read that waits too long, a
connection closed mid-body."""
REFUSALS: list[type[httpx.TransportError]] = [
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
]
"""What comes instead of an answer's headers: no connection, or one that timed out or broke."""


@dataclass
class Answer:
    """What the upstream answers: a status, a body, its content type and other headers; cut
    off after the body by the transport failure ``broken``, if any, or left hanging there when
    it ``stalls`` (the gateway's own timeouts end the wait); or, when ``refused`` is set, that
    failure before any headers (and nothing else of the answer is used); or, when ``silent``,
    nothing at all, not even its headers (``arrival`` never comes: the gateway's own timeouts
    end the wait)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    broken: type[httpx.TransportError] | None = None
    refused: type[httpx.TransportError] | None = None
    stalls: bool = False
    silent: bool = False

    @property
    def fails(self) -> bool:
        """Whether the upstream said no: an error status, or no answer at all."""
        return self.refused is not None or self.status >= 400 or self.silent

    async def arrival(self) -> httpx.Response:
        """``response()``, when it comes (for a handler of ``httpx.MockTransport``)."""
        if self.silent:
            await asyncio.sleep(3600)
        return self.response()

    def response(self) -> httpx.Response:
        if self.refused is not None:
            raise self.refused("no answer")
        named = {"content-type": self.content_type, **self.headers}
        headers = [(name.encode(), value.encode()) for name, value in named.items()]  # not ASCII
        if self.broken is None and not self.stalls:
            return httpx.Response(self.status, content=self.body, headers=headers)
        cut_by = self.broken

        async def cut() -> AsyncIterator[bytes]:
            yield self.body
            if self.stalls:
                await asyncio.sleep(3600)
            if cut_by is not None:
                raise cut_by("cut off")

        return httpx.Response(self.status, content=cut(), headers=headers)


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()  # Infinity, NaN and huge integers as they come


def json_answer(base: Any) -> st.SearchStrategy[Answer]:
    """``base`` with parts wrong; now and then not an object, or not JSON at all, or cut off
    part-way (``CUTS``)."""
    documents = wrong_in(base) | odd | st.just(None).map(lambda _: base)
    as_json = documents.map(lambda document: Answer(200, dumps(document)))
    garbage = st.sampled_from([b"", b"not json", b"<html>ok</html>", b'{"choices": [', b"\xff"])
    other = st.builds(Answer, st.sampled_from([200, 201, 204]), garbage | st.binary(max_size=20))

    def cut_off(answer: Answer, at: int, broken: type[httpx.TransportError]) -> Answer:
        return Answer(200, answer.body[: at % (len(answer.body) + 1)], broken=broken)

    cut = st.builds(cut_off, as_json, st.integers(0, 10_000), st.sampled_from(CUTS))
    return st.one_of(as_json, as_json, as_json, other, cut)


ERROR_BODIES = [
    b"",
    b"<html>502 Bad Gateway</html>",
    b"null",
    b"[]",
    b'"busy"',
    b'{"error": "text"}',
    b'{"error": {"message": 5}}',
    b'{"error": {"message": "m", "type": [], "param": 1, "code": {}}}',
    b'{"error": {"message": "context_length_exceeded", "code": "context_length_exceeded"}}',
    b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}',
    b'{"type": "error", "error": {"type": 5, "message": null}}',
    b"\xff\xfe",
]
failure = st.builds(
    Answer,
    st.sampled_from([400, 401, 403, 404, 408, 409, 413, 418, 422, 429, 500, 502, 503, 504, 529]),
    st.sampled_from(ERROR_BODIES) | st.binary(max_size=20),
    st.sampled_from(["application/json", "text/html", ""]),
    st.sampled_from(
        [{}]
        + [{"retry-after": value} for value in ("x", "-1", "nan", "1e999", "99999", "0")]
        + [{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, {"retry-after-ms": "inf"}]
    ),
)
"""An error status, with a body that may be anything (and a retry-after that never waits)."""
no_answer = st.builds(Answer, st.just(0), st.just(b""), refused=st.sampled_from(REFUSALS))
"""A transport failure before the headers: the status and body are never seen."""

ODD_EVENTS = [
    b"data: {not json\n\n",
    b"data: [1, 2]\n\n",
    b'data: "text"\n\n',
    b"data: null\n\n",
    b"data: \n\n",
    DONE,
    b": a comment\n\n",
    b'data: {"error": {"message": "boom"}}\n\n',
    b'data: {"error": "boom"}\n\n',
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    b'"message": "x"}}\n\n',
    b'event: error\ndata: {"type": "error", "error": "x"}\n\n',
    b'event: error\ndata: {"type": "error"}\n\n',
    b'data: {"type": "error", "code": "x", "message": "boom"}\n\n',
    b'event: mystery\ndata: {"type": "mystery"}\n\n',
    b'data: {"type": 7}\n\n',
    b'data: {"type": ["a"]}\n\n',
    b'event: \xff\xfe\ndata: {"type": "ping"}\n\n',
    b'data: {"type": "message_start"}\n\n',
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 9, '
    b'"delta": {"type": "text_delta", "text": "x"}}\n\n',
    b'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 9}\n\n',
    b'event: message_stop\ndata: {"type": "message_stop"}\n\n',
    b'event: response.completed\ndata: {"type": "response.completed"}\n\n',
    b'event: response.failed\ndata: {"type": "response.failed", "response": {"error": 5}}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {"content": 5}, "finish_reason": 7}]}\n\n',
    b'data: {"choices": [{"delta": null}], "usage": {"prompt_tokens": "3"}}\n\n',
]
"""Events no valid stream has, or has only at its end."""


def encoded(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event
    name, data = event
    return (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + dumps(data) + b"\n\n"


def stream_answer(base: list[Event]) -> st.SearchStrategy[Answer]:
    """``base``'s events with some wrong: a payload's part, an event dropped, repeated, renamed
    or odd (``ODD_EVENTS``) added; cut short now and then, or broken after its last byte (by a
    reset, a timeout or a protocol error: ``CUTS``)."""
    events = st.lists(
        st.tuples(
            st.sampled_from(["payload", "drop", "repeat", "rename", "insert"]),
            st.integers(0, len(base)),
            odd | st.just(DELETE),
            st.sampled_from(ODD_EVENTS),
        ),
        max_size=2,
    )
    payloads = wrong_in([None if isinstance(event, bytes) else event[1] for event in base], 1)

    def build(
        data: list[Any],
        edits: list[tuple[str, int, Any, bytes]],
        cut: int | None,
        broken: type[httpx.TransportError] | None,
    ) -> Answer:
        stream: list[Event] = [
            event if isinstance(event, bytes) else (event[0], data[i] if i < len(data) else None)
            for i, event in enumerate(base)
        ]
        for kind, index, value, raw in edits:
            at = min(index, len(stream) - 1)
            if kind == "insert":
                stream.insert(index, raw)
            elif not stream:
                continue
            elif kind == "drop":
                del stream[at]
            elif kind == "repeat":
                stream.insert(at, stream[at])
            elif kind == "rename" and not isinstance(event := stream[at], bytes):
                stream[at] = (value if isinstance(value, str) else None, event[1])
            elif (
                kind == "payload"
                and value is not DELETE
                and not isinstance(event := stream[at], bytes)
            ):
                stream[at] = (event[0], value)
        body = b"".join(encoded(event) for event in stream)
        if cut is not None:
            body = body[: cut % (len(body) + 1)]
        return Answer(200, body, "text/event-stream", broken=broken)

    return st.builds(
        build,
        payloads,
        events,
        st.none() | st.none() | st.integers(0, 10_000),
        st.sampled_from([None] * 6 + CUTS),
    )


def stalled(valid: st.SearchStrategy[Answer]) -> st.SearchStrategy[Answer]:
    """``valid``'s answers hanging part-way (or before their first byte); now and then
    ``silent``, without even their headers."""

    def cut(answer: Answer, at: int) -> Answer:
        body = answer.body[: at % (len(answer.body) + 1)]
        return Answer(answer.status, body, answer.content_type, stalls=True)

    silent = st.builds(Answer, st.just(200), st.just(b""), silent=st.just(True))
    return st.builds(cut, valid, st.integers(0, 10_000)) | silent


def stalling(valid: st.SearchStrategy[Answer]) -> st.SearchStrategy[Answer]:
    """``valid``'s answers, now and then hanging (``stalled``)."""
    return valid | stalled(valid)


def answers(valid: st.SearchStrategy[Answer]) -> st.SearchStrategy[Answer]:
    """Mostly ``valid``-looking answers with something wrong; one in five an error status or
    no answer at all."""
    return st.one_of(valid, valid, valid, valid, failure | no_answer)


speech = st.builds(
    Answer,
    st.just(200),
    st.binary(max_size=40),
    st.sampled_from(["audio/mpeg", "", "application/json", "text/event-stream", "é/\x00", "x"]),
    st.just({}),
    st.sampled_from([None, *CUTS]),
)
transcription = json_answer(TRANSCRIPTION) | st.builds(
    Answer,
    st.just(200),
    st.sampled_from([b"hi", b"", b"\xff", b'{"text": 5}', b"[]"]),
    st.sampled_from(["text/plain", "application/json", "application/json; charset=x", ""]),
)


SECOND_HOST = "second.test"
SECOND_PROVIDERS = f"""
[providers.second-openai]
type = "openai"
base_url = "http://{SECOND_HOST}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[providers.second-anthropic]
type = "anthropic"
base_url = "http://{SECOND_HOST}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
"""
"""A second upstream host (beside ``mock_config``'s ``upstream.test``) serving each dialect: the
upstreams a call falls back to in the fuzz and in the limits' property test."""
