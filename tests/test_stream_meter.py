"""How a stream's usage is known, or estimated when the stream is cut off."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.calls.metering import IMAGE_TOKENS, StreamMeter, estimate_prompt_tokens
from providers.errors import UpstreamUnavailable
from providers.types import StreamChunk, Usage


def content_chunk(text: str) -> StreamChunk:
    return StreamChunk({"choices": [{"index": 0, "delta": {"content": text}}]})


def meter_of(prompt: Any) -> StreamMeter:
    return StreamMeter(lambda: estimate_prompt_tokens(prompt))


def test_estimate_counts_text_and_structured_content() -> None:
    # Regression: structured content (parts, images) used to crash the estimate, and with it the
    # ledger row of a stream cut off mid-way.
    parts = [{"type": "text", "text": "x" * 20}, {"type": "image_url", "image_url": {"url": "u"}}]
    assert estimate_prompt_tokens(["a" * 8]) == 2
    assert estimate_prompt_tokens([parts]) > IMAGE_TOKENS
    assert estimate_prompt_tokens([None, "abcd"]) == 1  # a piece left out counts nothing
    assert estimate_prompt_tokens(None) == 0
    # A body's "type" may be anything: a list (unhashable) counts as JSON, never raises.
    assert estimate_prompt_tokens([{"type": ["text"], "text": "abcd"}]) > 1


def test_the_upstreams_usage_wins() -> None:
    meter = meter_of(["x" * 400])
    meter.observe(content_chunk("a"))
    meter.observe(StreamChunk({"choices": []}, usage=Usage(prompt_tokens=5, completion_tokens=9)))
    usage = meter.final_usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (5, 9, False)


def test_without_usage_the_chunks_are_counted() -> None:
    meter = meter_of(["x" * 40])
    for text in ("a", "", "b", "c"):
        meter.observe(content_chunk(text))
    usage = meter.final_usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (10, 3, True)


def test_a_failed_stream_keeps_the_input_its_upstream_reported() -> None:
    meter = meter_of(["ignored"])
    meter.observe(content_chunk("a"))
    meter.observe(content_chunk("b"))
    error = UpstreamUnavailable("overloaded")
    error.usage_so_far = Usage(prompt_tokens=120, completion_tokens=1, cache_read_tokens=100)
    meter.failed(error)
    usage = meter.final_usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (120, 2, 122)
    assert usage.cache_read_tokens == 100 and usage.estimated


def test_a_null_usage_is_cut_from_the_upstream_bytes_not_re_encoded() -> None:
    from gateway.calls.chat import sse_event

    raw = b'{"id":"c","choices":[{"index":0,"delta":{"content":"\\u00e9 a"}}],"usage":null}'
    chunk = StreamChunk(orjson.loads(raw), raw)
    event = sse_event(chunk, hide_usage=True)
    # The upstream's own escapes survive: the bytes were cut, not re-encoded.
    assert event == b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"\\u00e9 a"}}]}\n\n'
    spaced = b'{"choices": [], "usage": null}'
    other = StreamChunk(orjson.loads(spaced) | {"choices": [{"index": 0}]}, spaced)
    assert sse_event(other, hide_usage=True) == b'data: {"choices":[{"index":0}]}\n\n'
    assert sse_event(StreamChunk({"choices": []}, b"x"), hide_usage=False) == b"data: x\n\n"
