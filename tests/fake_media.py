"""The fake upstream's non-chat endpoints, in OpenAI's wire format (tests/fake_upstream.py serves
them).

- ``POST /v1/embeddings``: one vector per input (a string, a list of strings, a list of token
  ids, or a list of lists of them), ``dimensions`` long (default 4); input ``i`` gets
  ``[i + 1, i + 1.25, i + 1.5, ...]``, exact in float32. A JSON list of floats, or base64 of
  little-endian float32 when ``encoding_format`` is ``base64``. Usage: ``EMBEDDING_TOKENS`` prompt
  (and total) tokens per input.
- ``POST /v1/images/generations``: ``n`` (default 1) images as ``b64_json`` (a 1x1 PNG), or as
  ``url`` when ``response_format`` is ``url``. A model whose name contains ``gpt-image`` also
  answers ``size``, ``quality`` (``auto``: 1024x1024, medium) and token usage: 50 input tokens,
  ``IMAGE_OUTPUT_TOKENS[quality]`` output tokens per image.
- ``POST /v1/audio/speech``: ``SPEECH_AUDIO``, 4 chunks of 1 KiB (--chunk-gap-ms apart), with the
  content type of ``response_format`` (mp3, the default: ``audio/mpeg``).
- ``POST /v1/audio/transcriptions`` (multipart, ``model`` and ``file`` required):
  ``response_format`` json (default) answers ``{"text": TRANSCRIPT, "usage": {"type":
  "duration", "seconds": 7}}``; verbose_json ``{"duration": 7.5, "text": ...}`` without usage;
  text, srt and vtt the bare text as ``text/plain``.

Model names pick behaviours as for chat: ``fail-500`` / ``fail-429`` / ``fail-400`` /
``fail-401``; ``garbage`` (200, ``not json``); ``slow`` (waits --slow-seconds first);
``slow-stream`` (speech: 100 chunks 100 ms apart); ``drop-mid-stream`` (speech: 2 chunks, then
the socket closes; the others close without answering); ``echo``: the request comes back,
``{"body": <the request: JSON, or the form with its file's name, type and size>, "headers":
{...}}``, in an ``echo`` field of JSON answers, as the audio of speech, as the transcript.

An instance's script (tests/fake_upstream.py, "Scripts") applies to these endpoints too: failures,
delays, and the stall or close of a stream, which counts speech's audio chunks.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

from fake_wire import (
    FAILURES,
    LAST_CHUNK,
    Headers,
    Plan,
    Shape,
    chunk,
    compact,
    dumps,
    echo_auth_answer,
    error_body,
    failure_answer,
    full,
    head,
    paced,
)

EMBEDDINGS = "/v1/embeddings"
IMAGES = "/v1/images/generations"
SPEECH = "/v1/audio/speech"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
MEDIA_PATHS = frozenset({EMBEDDINGS, IMAGES, SPEECH, TRANSCRIPTIONS})

EMBEDDING_TOKENS = 6
EMBEDDING_DIMENSIONS = 4
PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg=="
)
IMAGE_INPUT_TOKENS = 50
IMAGE_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
SPEECH_AUDIO = [bytes((i * 16 + j) % 256 for j in range(1024)) for i in range(4)]
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
TRANSCRIPT = "The quick brown fox jumps over the lazy dog."
TRANSCRIPTION_SECONDS = 7
VERBOSE_DURATION = 7.5


def media_plan(
    path: str,
    headers: dict[str, str],
    body: bytes,
    keep: bool,
    delay: float,
    slow_seconds: float,
    gap: float,
    shape: Shape | None = None,
) -> Plan:
    extra: Headers = [("x-request-id", "req_fake")]
    if path == TRANSCRIPTIONS:
        request = parse_form(headers.get("content-type", ""), body)
    else:
        request = _json_object(body)
    if request is None or not isinstance(request.get("model"), str):
        message = "the body must be a JSON object (a multipart form) with a string 'model'"
        return [full(400, error_body(False, "invalid_request_error", message), keep, [])]
    model: str = request["model"]
    failure = FAILURES.get(model)
    if failure:
        return [failure_answer(failure, False, keep, extra)]
    if (echoed := echo_auth_answer(model, False, headers, keep, extra)) is not None:
        return [echoed]
    if model == "garbage":
        return [full(200, b"not json", keep, extra)]
    if model == "drop-mid-stream" and path != SPEECH:
        return [None]
    pre = slow_seconds if model == "slow" else delay
    echo = {"body": request, "headers": headers} if model == "echo" else None
    if path == SPEECH:
        return compact([pre, *_speech(request, model, keep, gap, extra, echo, shape)])
    if path == TRANSCRIPTIONS:
        if not isinstance(request.get("file"), dict):
            error = error_body(False, "invalid_request_error", "file is required", "file")
            return [full(400, error, keep, extra)]
        answer, content_type = _transcription(request, echo)
        return compact([pre, full(200, answer, keep, extra, content_type)])
    answer = _embeddings(request) if path == EMBEDDINGS else _images(request)
    if echo is not None:
        answer["echo"] = echo
    return compact([pre, full(200, answer, keep, extra)])


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def embedding_vector(index: int, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    return [index + 1 + d / 4 for d in range(dimensions)]


def _embeddings(request: dict[str, Any]) -> dict[str, Any]:
    value = request.get("input")
    many = isinstance(value, list) and any(not isinstance(item, int) for item in value)
    count = len(value) if many and isinstance(value, list) else 1
    dimensions = request.get("dimensions")
    if not isinstance(dimensions, int) or dimensions < 1:
        dimensions = EMBEDDING_DIMENSIONS
    data = []
    for index in range(count):
        vector = embedding_vector(index, dimensions)
        embedding: Any = vector
        if request.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = EMBEDDING_TOKENS * count
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": request["model"], "usage": usage}


def _images(request: dict[str, Any]) -> dict[str, Any]:
    n = request.get("n") if isinstance(request.get("n"), int) else 1
    image = {"url": "https://images.invalid/1.png"}
    if request.get("response_format") != "url":
        image = {"b64_json": PNG_1X1}
    answer: dict[str, Any] = {"created": 1700000000, "data": [dict(image) for _ in range(n)]}
    if "gpt-image" in request["model"]:
        size = request.get("size")
        quality = request.get("quality")
        quality = quality if quality in IMAGE_OUTPUT_TOKENS else "medium"
        output = IMAGE_OUTPUT_TOKENS[quality] * n
        answer.update(
            size=size if size in ("1024x1024", "1024x1536", "1536x1024") else "1024x1024",
            quality=quality,
            output_format="png",
            background="opaque",
            usage={
                "input_tokens": IMAGE_INPUT_TOKENS,
                "output_tokens": output,
                "total_tokens": IMAGE_INPUT_TOKENS + output,
                "input_tokens_details": {"text_tokens": IMAGE_INPUT_TOKENS, "image_tokens": 0},
            },
        )
    return answer


def _speech(
    request: dict[str, Any],
    model: str,
    keep: bool,
    gap: float,
    extra: Headers,
    echo: dict[str, Any] | None,
    shape: Shape | None,
) -> Plan:
    pieces = SPEECH_AUDIO
    if echo is not None:
        pieces = [dumps(echo)]
    elif model == "slow-stream":
        pieces, gap = SPEECH_AUDIO * 25, 0.1
    elif model == "drop-mid-stream":
        pieces = SPEECH_AUDIO[:2]
    content_type = SPEECH_TYPES.get(str(request.get("response_format")), "audio/mpeg")
    framing = [("content-type", content_type), ("transfer-encoding", "chunked")]
    plan: Plan = [head(200, framing + extra, keep)]
    plan += paced([chunk(piece) for piece in pieces], gap, shape)
    if plan[-1] is None:
        return plan
    return [*plan, None if model == "drop-mid-stream" else LAST_CHUNK]


def _transcription(request: dict[str, Any], echo: dict[str, Any] | None) -> tuple[Any, str]:
    text = json.dumps(echo) if echo is not None else TRANSCRIPT
    response_format = request.get("response_format") or "json"
    if response_format == "json":
        usage = {"type": "duration", "seconds": TRANSCRIPTION_SECONDS}
        return {"text": text, "usage": usage}, "application/json"
    if response_format == "verbose_json":
        answer = {"task": "transcribe", "language": "english", "duration": VERBOSE_DURATION}
        return {**answer, "text": text, "segments": []}, "application/json"
    return (text + "\n").encode(), "text/plain; charset=utf-8"


_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_form(content_type: str, body: bytes) -> dict[str, Any] | None:
    """A multipart form, enough to answer: text fields by name (``name[]`` fields as lists),
    files as ``{"filename", "content_type", "size"}``. None when it is not one."""
    kind, _, params = content_type.partition(";")
    boundary = None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            boundary = value.strip('"')
    if kind.strip().lower() != "multipart/form-data" or not boundary:
        return None
    form: dict[str, Any] = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        part_head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            return None
        content = content.removesuffix(b"\r\n")
        disposition, part_type = "", "text/plain"
        for line in part_head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
            elif name.strip().lower() == "content-type":
                part_type = value.strip()
        fields = dict(_PARAM.findall(disposition))
        field = fields.get("name")
        if field is None:
            continue
        if "filename" in fields:
            file = {"filename": fields["filename"], "content_type": part_type}
            form[field] = {**file, "size": len(content)}
        elif field.endswith("[]"):
            form.setdefault(field, []).append(content.decode())
        else:
            form[field] = content.decode()
    return form
