"""Embeddings, images, speech and transcriptions: the non-chat endpoints, metered like chat.

Each goes through the pipeline (``gateway.calls.pipeline``) like a chat call; what is particular
is what a call is billed: tokens for embeddings (and for token-priced image or transcription
models), the image count, the characters of speech, the seconds of audio transcribed, each
priced in its unit (``providers.pricing``). A call also knows what its request would be billed if
the client hung up before the answer (the upstream does the work all the same): the gateway's own
count, recorded as estimated.

Speech streams: the audio reaches the client as the upstream sends it, and the row is written when
the stream ends. A transcription is a multipart upload, parsed in memory (ApiHandler has already
read the body, capped) and forwarded as multipart; its file is held to TOLLGATE_MAX_UPLOAD_BYTES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.http import HttpRequest, HttpResponseBase
from django.http.multipartparser import MultiPartParserError

from gateway.calls.metering import Unmetered
from gateway.calls.parsing import invalid_param, validate_request
from gateway.calls.pipeline import Call, OpenStream, Relay, open_stream
from providers.base import (
    EmbeddingRequest,
    FormFile,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from providers.errors import InvalidRequest, PayloadTooLarge
from providers.factory import Route
from providers.pricing import estimate_audio_seconds, estimate_embedding_tokens
from providers.types import Units, Usage


async def embeddings(call: Call, request: HttpRequest) -> HttpResponseBase:
    embedding = validate_request(EmbeddingRequest, await call.parse_json(request.body))
    call.resolve(embedding.model, "embeddings")
    expected = Usage(prompt_tokens=estimate_embedding_tokens(embedding.input), estimated=True)
    await admit_expected(call, expected)
    answer = await call.upstream(
        lambda route: route.provider.embed(embedding, route.upstream_model)
    )
    # A backend that reports no usage is billed by the gateway's count of the input.
    usage = answer.usage if answer.usage.prompt_tokens is not None else expected
    return call.answer_json(answer.raw, usage, content_type=answer.content_type)


async def images(call: Call, request: HttpRequest) -> HttpResponseBase:
    image = validate_request(ImageRequest, await call.parse_json(request.body))
    call.resolve(image.model, "images")
    units = Units(images=image.n or 1, image_size=image.size, image_quality=image.quality)
    await admit_expected(call, units=units)
    answer = await call.upstream(
        lambda route: route.provider.image_gen(image, route.upstream_model)
    )
    return call.answer_json(answer.raw, answer.usage, answer.units, answer.content_type)


async def speech(call: Call, request: HttpRequest) -> HttpResponseBase:
    """The audio streams through; it is billed by its input's characters, however it ends."""
    spoken = validate_request(SpeechRequest, await call.parse_json(request.body))
    call.resolve(spoken.model, "speech")
    call.stream = True
    units = Units(characters=len(spoken.input))
    await admit_expected(call, units=units)

    async def open_audio(route: Route) -> Relay:
        audio = await route.provider.text_to_speech(spoken, route.upstream_model)
        stream = await open_stream(audio.chunks, route, audio.aclose, may_be_empty=True)
        return Relay(stream, _audio(stream), Unmetered(), audio.content_type)

    return call.answer_stream(await call.upstream(open_audio), None, units)


async def _audio(stream: OpenStream[bytes]) -> AsyncGenerator[bytes, None]:
    if stream.first:
        yield stream.first
    async for chunk in stream.rest:
        yield chunk


async def transcriptions(call: Call, request: HttpRequest) -> HttpResponseBase:
    """A multipart upload (``file``, ``model``, ...), forwarded as multipart."""
    transcription, audio = read_transcription_form(request, call)
    call.resolve(transcription.model, "transcription")
    estimate = Units(audio_seconds=estimate_audio_seconds(audio.data))
    await admit_expected(call, units=estimate)
    answer = await call.upstream(
        lambda route: route.provider.transcribe(transcription, route.upstream_model)
    )
    usage, units = answer.usage, answer.units
    if units is None or units.audio_seconds is None:
        # The upstream did not say how long the audio was (text, srt and vtt answers never
        # do): bill the gateway's estimate from the upload, marked as estimated.
        usage, units = dataclasses.replace(usage, estimated=True), estimate
    return call.answer_json(answer.raw, usage, units, answer.content_type)


async def admit_expected(
    call: Call, usage: Usage | None = None, units: Units | None = None
) -> None:
    """Admit the call on what its request will be billed, which is also what it is billed if
    the client hangs up before the answer."""
    call.abandoned_usage = usage or Usage(estimated=True)
    call.abandoned_units = units
    await call.admit(usage.prompt_tokens or 0 if usage else 0, 0, units or Units())


class InMemoryUploadHandler(MemoryFileUploadHandler):
    """Keeps every uploaded file in memory, whatever its size: the body already is (ApiHandler
    reads it whole, capped), and nothing is then written to disk from the event loop."""

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        self.activated = True


def read_transcription_form(http: HttpRequest, call: Call) -> tuple[TranscriptionRequest, FormFile]:
    """The multipart form of a transcription, and its audio: ``model`` and ``file`` are required,
    files are held to TOLLGATE_MAX_UPLOAD_BYTES, every other field goes upstream as it came."""
    if http.content_type != "multipart/form-data":
        raise InvalidRequest(
            "Send a transcription as multipart/form-data, with the audio in the `file` field.",
            code="invalid_content_type",
        )
    http.upload_handlers = [InMemoryUploadHandler(http)]
    try:
        form, uploads = http.POST, http.FILES
    except RequestDataTooBig:
        raise PayloadTooLarge("The form's text fields are too large.") from None
    except (MultiPartParserError, SuspiciousOperation):
        raise InvalidRequest(
            "We could not parse the multipart body of your request.", code="invalid_multipart"
        ) from None
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_param("model")
    call.requested_model = model
    limit = settings.TOLLGATE_MAX_UPLOAD_BYTES
    files = []
    for name, items in uploads.lists():
        for item in items:
            if item.size is not None and item.size > limit:
                raise PayloadTooLarge(
                    f"The file is too large ({item.size} bytes): files may be up to {limit} bytes.",
                    param=name,
                )
            data = item.read()
            content_type = item.content_type or "application/octet-stream"
            files.append(FormFile(name, item.name or name, content_type, data))
    audio = next((file for file in files if file.field == "file"), None)
    if audio is None:
        raise invalid_param("file")
    if not audio.data:
        raise invalid_param("file", "the file is empty")
    fields = [(name, value) for name, values in form.lists() for value in values]
    return TranscriptionRequest(model, fields, files), audio
