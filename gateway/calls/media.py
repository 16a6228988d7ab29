"""Embeddings, images, speech and transcriptions: the non-chat endpoints, metered like chat.

A call goes the way of a chat call (gateway/calls/pipeline.py): the body is validated (400
naming the param), the model resolved and held to the operations config.toml declares for it (400
``unsupported_operation`` before anything is sent upstream), the provider called, and ``ChatCall``
writes the call's one ledger row: tokens for embeddings (and for token-priced image or
transcription models), the image count, the characters of speech, the seconds of audio
transcribed, and the cost in each modality's unit (providers/pricing.py). Failures, invalid bodies
and abandoned calls write theirs too.

Speech streams: the audio reaches the client as the upstream sends it, and the row is written when
the stream ends. A transcription is a multipart upload, parsed in memory (ApiHandler has already
read the body, capped) and forwarded as multipart; its file is held to TOLLGATE_MAX_UPLOAD_BYTES.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadhandler import MemoryFileUploadHandler
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.http.multipartparser import MultiPartParserError

from gateway.api.errors import ResponseAborted
from gateway.calls.pipeline import (
    CLIENT_CLOSED_REQUEST,
    ChatCall,
    invalid_param,
    parse_json_object,
    validate_request,
)
from gateway.runtime import Runtime
from gateway.tenants.auth import Caller
from providers.base import (
    EmbeddingRequest,
    FormFile,
    ImageRequest,
    SpeechRequest,
    TranscriptionRequest,
)
from providers.errors import GatewayError, InvalidRequest, PayloadTooLarge
from providers.factory import Route, unsupported
from providers.pricing import estimate_audio_seconds, estimate_embedding_tokens
from providers.types import AudioStream, MediaResponse, Operation, Units, Usage

log = logging.getLogger("tollgate.media")

ENDPOINTS: dict[Operation, str] = {
    "embeddings": "embeddings",
    "images": "images.generations",
    "speech": "audio.speech",
    "transcription": "audio.transcriptions",
}
"""The ledger's ``endpoint`` of each operation."""


class MediaCall(ChatCall):
    """A ``ChatCall`` for one operation. It knows what its request would be billed if the client
    hung up before the answer (the upstream does the work all the same): ``expected_usage`` and
    ``expected_units``, the gateway's own count, recorded as estimated."""

    def __init__(self, runtime: Runtime, caller: Caller, operation: Operation) -> None:
        super().__init__(runtime, caller, ENDPOINTS[operation])
        self.operation: Operation = operation
        self.expected_usage = Usage(estimated=True)
        self.expected_units: Units | None = None

    def resolve(self, model: str) -> Route:
        """Route ``model``; 400 if it does not declare this call's operation."""
        self.route = self.runtime.factory.resolve(model, self.operation)
        return self.route

    async def admit_expected(self, route: Route) -> None:
        """Admit the call (``ChatCall.admit``) on what its request will be billed."""
        await self.admit(
            route, self.expected_usage.prompt_tokens or 0, 0, self.expected_units or Units()
        )

    def record_abandoned(self) -> None:
        self.record(
            self.expected_usage, CLIENT_CLOSED_REQUEST, "client_disconnected", self.expected_units
        )


Handler = Callable[[MediaCall], Awaitable[HttpResponseBase]]


class MediaService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def embeddings(self, caller: Caller, body: bytes) -> HttpResponseBase:
        return await self._call(caller, "embeddings", lambda call: self._embeddings(call, body))

    async def images(self, caller: Caller, body: bytes) -> HttpResponseBase:
        return await self._call(caller, "images", lambda call: self._images(call, body))

    async def speech(self, caller: Caller, body: bytes) -> HttpResponseBase:
        return await self._call(caller, "speech", lambda call: self._speech(call, body))

    async def transcriptions(self, caller: Caller, request: HttpRequest) -> HttpResponseBase:
        return await self._call(
            caller, "transcription", lambda call: self._transcription(call, request)
        )

    async def _call(
        self, caller: Caller, operation: Operation, handle: Handler
    ) -> HttpResponseBase:
        """Run one call; whatever happens before its answer, it leaves its ledger row."""
        call = MediaCall(self.runtime, caller, operation)

        async def handled() -> HttpResponseBase:
            try:
                return await handle(call)
            except NotImplementedError:  # the model's provider cannot (Anthropic: chat only)
                raise unsupported(call.requested_model, operation) from None

        return await call.answer(handled)

    # --- JSON in, JSON out -----------------------------------------------------------------------

    async def _embeddings(self, call: MediaCall, body: bytes) -> HttpResponseBase:
        request = validate_request(EmbeddingRequest, await parse_json_object(body, call))
        route = call.resolve(request.model)
        call.expected_usage = Usage(
            prompt_tokens=estimate_embedding_tokens(request.input), estimated=True
        )
        await call.admit_expected(route)
        answer = await route.provider.embed(request, route.upstream_model)
        # A backend that reports no usage is billed by the gateway's count of the input.
        usage = answer.usage if answer.usage.prompt_tokens is not None else call.expected_usage
        call.record(usage, 200)
        return _answer(answer, call)

    async def _images(self, call: MediaCall, body: bytes) -> HttpResponseBase:
        request = validate_request(ImageRequest, await parse_json_object(body, call))
        route = call.resolve(request.model)
        call.expected_units = Units(
            images=request.n or 1, image_size=request.size, image_quality=request.quality
        )
        await call.admit_expected(route)
        answer = await route.provider.image_gen(request, route.upstream_model)
        call.record(answer.usage, 200, units=answer.units)
        return _answer(answer, call)

    # --- speech: audio streamed through ----------------------------------------------------------

    async def _speech(self, call: MediaCall, body: bytes) -> HttpResponseBase:
        request = validate_request(SpeechRequest, await parse_json_object(body, call))
        route = call.resolve(request.model)
        call.stream = True
        units = call.expected_units = Units(characters=len(request.input))
        await call.admit_expected(route)
        audio = await route.provider.text_to_speech(request, route.upstream_model)
        try:
            first = await anext(audio.chunks, b"")  # a failure before any audio: a JSON error
        except BaseException:
            await audio.aclose()
            raise
        call.close_pending = audio.aclose
        response = StreamingHttpResponse(
            self._relay(call, audio, first, units), content_type=audio.content_type
        )
        response["x-request-id"] = call.request_id
        response["x-accel-buffering"] = "no"  # tell nginx not to buffer the audio
        return response

    async def _relay(
        self, call: MediaCall, audio: AudioStream, first: bytes, units: Units
    ) -> AsyncIterator[bytes]:
        """Forward the audio; whatever happens, write the ledger row at the end. Audio cannot
        carry an error in-band: a failure mid-stream cuts the response off (``ResponseAborted``)
        so that the client sees a broken download, not a short file."""
        status, error = 200, ""
        try:
            if first:
                yield first
            async for chunk in audio.chunks:
                yield chunk
        except GatewayError as exc:
            status, error = exc.status, exc.code or exc.type
            raise ResponseAborted(exc.message) from exc
        except (asyncio.CancelledError, GeneratorExit):
            status, error = CLIENT_CLOSED_REQUEST, "client_disconnected"
            raise
        except Exception as exc:
            log.exception("speech %s failed", call.request_id)
            status, error = 500, "internal_error"
            raise ResponseAborted("internal error") from exc
        finally:
            call.record(Usage(), status, error, units)  # the upstream has the input: billed
            await audio.aclose()

    # --- transcription: a multipart upload -------------------------------------------------------

    async def _transcription(self, call: MediaCall, http: HttpRequest) -> HttpResponseBase:
        request, audio = read_transcription_form(http, call)
        route = call.resolve(request.model)
        estimate = Units(audio_seconds=estimate_audio_seconds(audio.data))
        call.expected_units = estimate
        await call.admit_expected(route)
        answer = await route.provider.transcribe(request, route.upstream_model)
        usage, units = answer.usage, answer.units
        if units is None or units.audio_seconds is None:
            # The upstream did not say how long the audio was (text, srt and vtt answers never
            # do): bill the gateway's estimate from the upload, marked as estimated.
            usage, units = usage.model_copy(update={"estimated": True}), estimate
        call.record(usage, 200, units=units)
        return _answer(answer, call)


def _answer(answer: MediaResponse, call: ChatCall) -> HttpResponse:
    response = HttpResponse(answer.raw, content_type=answer.content_type)
    response["x-request-id"] = call.request_id
    return response


class InMemoryUploadHandler(MemoryFileUploadHandler):
    """Keeps every uploaded file in memory, whatever its size: the body already is (ApiHandler
    reads it whole, capped), and nothing is then written to disk from the event loop."""

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        self.activated = True


def read_transcription_form(
    http: HttpRequest, call: ChatCall
) -> tuple[TranscriptionRequest, FormFile]:
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
