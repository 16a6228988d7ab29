"""End to end: embeddings, images, speech and transcriptions through the official ``openai`` SDK.

The gateway runs under uvicorn (``gateway_server``), routed to the fake upstream process, whose
media endpoints and model-name behaviours are described in tests/fake_media.py. Each test checks
what the SDK returns, the raw response against OpenAI's schema where one exists, and the call's
one ledger row with its units and exact cost.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from support.e2e import check_error, rows_of, settle, validate

from conftest import GatewayServer, TenantKey, start_gateway, wait_for_rows
from fake_media import (
    EMBEDDING_TOKENS,
    IMAGE_INPUT_TOKENS,
    IMAGE_OUTPUT_TOKENS,
    PNG_1X1,
    SPEECH_AUDIO,
    TRANSCRIPT,
    TRANSCRIPTION_SECONDS,
    VERBOSE_DURATION,
    embedding_vector,
)
from gateway.models import UsageRecord

pytestmark = pytest.mark.e2e

MILLION = Decimal(1_000_000)
AUDIO = b"".join(SPEECH_AUDIO)


@pytest.fixture
def sdk(gateway_server: GatewayServer) -> Iterator[Callable[[TenantKey], openai.OpenAI]]:
    clients: list[openai.OpenAI] = []

    def make(who: TenantKey) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=gateway_server.base_url + "/v1", api_key=who.raw, max_retries=0, timeout=15
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent 16-bit mono PCM WAV of ``seconds``."""
    data = b"\0\0" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    body = b"WAVE" + chunks + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def one_row(request_id: str) -> UsageRecord:
    rows = wait_for_rows(1, request_id=request_id)
    assert len(rows) == 1
    return rows[0]


def assert_only_row(server: GatewayServer, tenants: dict[str, TenantKey], who: str) -> None:
    settle(server, tenants["bob"] if who != "bob" else tenants["charlie"])
    assert len(rows_of(tenants[who])) == 1, "one call, one ledger row"


# --- embeddings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding_format", [None, "float"], ids=["sdk-default-base64", "float"])
def test_embeddings_with_the_sdk(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
    encoding_format: str | None,
) -> None:
    extra: dict[str, Any] = {"encoding_format": encoding_format} if encoding_format else {}
    raw = sdk(tenants["alice"]).embeddings.with_raw_response.create(
        model="embed-test", input=["first", "second"], dimensions=3, **extra
    )
    result = raw.parse()

    body = raw.http_response.json()
    if encoding_format == "float":
        validate("CreateEmbeddingResponse", body)
    else:  # what the SDK asks for by default: little-endian float32, base64
        assert isinstance(body["data"][0]["embedding"], str)
    assert [item.embedding for item in result.data] == [
        embedding_vector(0, 3),
        embedding_vector(1, 3),
    ]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (2 * EMBEDDING_TOKENS,) * 2

    row = one_row(raw.headers["x-request-id"])
    assert (row.endpoint, row.requested_model, row.upstream_model, row.status_code) == (
        "embeddings",
        "embed-test",
        "fake-embed",
        200,
    )
    assert (row.prompt_tokens, row.total_tokens, row.usage_estimated) == (12, 12, False)
    assert row.cost_usd == 12 * Decimal("0.02") / MILLION
    assert_only_row(gateway_server, tenants, "alice")


def test_embedding_request_fields_reach_the_upstream(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    alice = tenants["alice"]
    body = {"model": "fake/echo", "input": [[1, 2, 3]], "encoding_format": "base64", "user": "u"}
    response = httpx.post(
        gateway_server.base_url + "/v1/embeddings", headers=alice.headers, json=body, timeout=10
    )
    assert response.status_code == 200
    echoed = response.json()["echo"]
    assert echoed["body"] == {**body, "model": "echo"}
    assert echoed["headers"]["authorization"] == "Bearer sk-upstream-secret"
    assert alice.raw not in response.text
    one_row(response.headers["x-request-id"])


# --- images --------------------------------------------------------------------------------------


def test_images_with_the_sdk_are_billed_per_image(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    raw = sdk(tenants["alice"]).images.with_raw_response.generate(
        model="image-test", prompt="A lighthouse at dusk", n=2, size="1024x1024", quality="hd"
    )
    images = raw.parse()

    validate("ImagesResponse", raw.http_response.json())
    assert images.data is not None and [image.b64_json for image in images.data] == [PNG_1X1] * 2
    row = one_row(raw.headers["x-request-id"])
    assert (row.endpoint, row.image_count, row.status_code) == ("images.generations", 2, 200)
    assert row.cost_usd == Decimal("0.16")  # image_prices["1024x1024/hd"] = 0.08, twice
    assert_only_row(gateway_server, tenants, "alice")


def test_gpt_image_with_the_sdk_is_billed_by_its_tokens(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    raw = sdk(tenants["bob"]).images.with_raw_response.generate(
        model="gpt-image-test", prompt="A lighthouse at dusk", quality="high"
    )
    images = raw.parse()

    validate("ImagesResponse", raw.http_response.json())
    assert images.usage is not None and images.usage.output_tokens == IMAGE_OUTPUT_TOKENS["high"]
    row = one_row(raw.headers["x-request-id"])
    assert (row.image_count, row.prompt_tokens, row.completion_tokens) == (
        1,
        IMAGE_INPUT_TOKENS,
        IMAGE_OUTPUT_TOKENS["high"],
    )
    # input 5.0 and output 40.0 USD per Mtok: (50 * 5 + 4160 * 40) / 1e6
    assert row.cost_usd == Decimal("0.16665")


# --- speech --------------------------------------------------------------------------------------


def test_speech_with_the_sdk_streams_the_audio_and_bills_characters(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    text = "Hello, wörld! ✓"  # 15 characters, 19 bytes of UTF-8
    with sdk(tenants["alice"]).audio.speech.with_streaming_response.create(
        model="tts-test", voice="alloy", input=text
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert "content-length" not in response.headers  # streamed, not buffered whole
        audio = b"".join(response.iter_bytes())
        request_id = response.headers["x-request-id"]

    assert audio == AUDIO
    row = one_row(request_id)
    assert (row.endpoint, row.upstream_model, row.stream, row.status_code) == (
        "audio.speech",
        "fake-tts",
        True,
        200,
    )
    assert row.input_characters == 15
    assert row.cost_usd == 15 * Decimal(15) / MILLION
    assert_only_row(gateway_server, tenants, "alice")


def test_speech_format_picks_the_content_type(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    with sdk(tenants["alice"]).audio.speech.with_streaming_response.create(
        model="tts-test", voice="alloy", input="hi", response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert b"".join(response.iter_bytes()) == AUDIO
    assert one_row(response.headers["x-request-id"]).status_code == 200


def test_speech_reaches_the_client_before_the_upstream_has_finished(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    """slow-stream sends 100 chunks 100 ms apart: buffered, the first byte would take 10 s. The
    client then hangs up: the row is written at once, 499, with the characters billed."""
    alice = tenants["alice"]
    body = {"model": "slow-stream", "input": "A long story.", "voice": "alloy"}
    started = time.monotonic()
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gateway_server.base_url + "/v1/audio/speech", headers=alice.headers, json=body
        ) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_raw())
        first_byte = time.monotonic() - started
        request_id = response.headers["x-request-id"]
    assert first and AUDIO.startswith(first)
    assert first_byte < 3.0, f"the first audio took {first_byte:.1f} s: buffered"

    row = one_row(request_id)
    assert (row.status_code, row.error_type) == (499, "client_disconnected")
    assert (row.input_characters, row.cost_usd) == (13, 13 * Decimal(15) / MILLION)
    assert_only_row(gateway_server, tenants, "alice")


def test_speech_cut_off_by_the_upstream_is_cut_off_for_the_client(
    gateway_server: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    """drop-mid-stream closes after 2 KiB: the client must see a broken download (no final
    chunk), not a short file it would take for the whole audio."""
    alice = tenants["alice"]
    body = {"model": "drop-mid-stream", "input": "Hello", "voice": "alloy"}
    received = b""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gateway_server.base_url + "/v1/audio/speech", headers=alice.headers, json=body
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        with pytest.raises(httpx.RemoteProtocolError):
            for part in response.iter_raw():
                received += part
    assert received == b"".join(SPEECH_AUDIO[:2])
    row = one_row(request_id)
    assert (row.status_code, row.error_type) == (502, "upstream_unavailable")
    assert row.input_characters == 5


# --- transcriptions ------------------------------------------------------------------------------


def test_transcription_with_the_sdk_is_billed_by_the_minute(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    raw = sdk(tenants["alice"]).audio.transcriptions.with_raw_response.create(
        model="stt-test", file=("speech.wav", wav(2), "audio/wav")
    )
    transcription = raw.parse()

    assert transcription.text == TRANSCRIPT
    row = one_row(raw.headers["x-request-id"])
    assert (row.endpoint, row.upstream_model, row.status_code) == (
        "audio.transcriptions",
        "fake-whisper",
        200,
    )
    assert (row.audio_seconds, row.usage_estimated) == (Decimal(TRANSCRIPTION_SECONDS), False)
    assert row.cost_usd == Decimal("0.0007")  # 7 s at 0.006 USD per minute
    assert_only_row(gateway_server, tenants, "alice")


@pytest.mark.parametrize(
    ("response_format", "seconds", "estimated"),
    [("verbose_json", str(VERBOSE_DURATION), False), ("text", "2.5", True), ("srt", "2.5", True)],
)
def test_transcription_formats(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
    response_format: Any,
    seconds: str,
    estimated: bool,
) -> None:
    """verbose_json says its duration; text and srt say nothing: the seconds come from the
    uploaded WAV's header, marked as estimated."""
    raw = sdk(tenants["alice"]).audio.transcriptions.with_raw_response.create(
        model="stt-test",
        file=("speech.wav", wav(2.5), "audio/wav"),
        response_format=response_format,
    )
    result = raw.parse()
    if response_format == "verbose_json":
        assert result.duration == VERBOSE_DURATION  # type: ignore[union-attr]
    else:
        assert result == TRANSCRIPT + "\n"
        assert raw.headers["content-type"].startswith("text/plain")
    row = one_row(raw.headers["x-request-id"])
    assert (row.audio_seconds, row.usage_estimated) == (Decimal(seconds), estimated)
    assert row.cost_usd == Decimal(seconds) * Decimal("0.006") / 60


def test_transcription_form_reaches_the_upstream_as_multipart(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    audio = wav(1)
    raw = sdk(tenants["alice"]).audio.transcriptions.with_raw_response.create(
        model="fake/echo",
        file=("meeting.wav", audio, "audio/wav"),
        language="fr",
        prompt="Réunion",
        temperature=0.2,
        timestamp_granularities=["word", "segment"],
        response_format="json",
    )
    echoed = json.loads(raw.parse().text)
    form, headers = echoed["body"], echoed["headers"]
    assert form == {
        "model": "echo",
        "language": "fr",
        "prompt": "Réunion",
        "temperature": "0.2",
        "timestamp_granularities[]": ["word", "segment"],
        "response_format": "json",
        "file": {"filename": "meeting.wav", "content_type": "audio/wav", "size": len(audio)},
    }
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert one_row(raw.headers["x-request-id"]).upstream_model == "echo"


@pytest.fixture(scope="module")
def small_uploads(
    django_db_setup: None, fake_upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """A gateway whose uploads may be up to 64 KiB."""
    server = start_gateway(
        tmp_path_factory.mktemp("small-uploads"),
        fake_upstream,
        env={"TOLLGATE_MAX_UPLOAD_BYTES": str(64 * 1024)},
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("size", "recorded"),
    [(64 * 1024 + 1, True), (3 * 1024 * 1024, False)],
    ids=["file-over-the-limit", "body-far-over-the-limit"],
)
def test_oversized_upload_is_a_clear_413(
    small_uploads: GatewayServer, tenants: dict[str, TenantKey], size: int, recorded: bool
) -> None:
    """Just over the limit, the view sees the file: 413, in the ledger. Far over it, the
    server refuses the body before reading it (before authentication: no ledger row). Either
    way the SDK gets a 413 in OpenAI's shape, never a 500 or a broken connection."""
    alice = tenants["alice"]
    client = openai.OpenAI(
        base_url=small_uploads.base_url + "/v1", api_key=alice.raw, max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(
            model="stt-test", file=("big.wav", b"\0" * size, "audio/wav")
        )
    error = check_error(caught.value.response, 413, code="payload_too_large", param="file")
    assert str(64 * 1024) in error["message"]
    ok = client.audio.transcriptions.create(model="stt-test", file=("ok.wav", wav(1), "audio/wav"))
    assert ok.text == TRANSCRIPT
    settle(small_uploads, tenants["bob"])
    statuses = [row.status_code for row in rows_of(alice)]
    assert statuses == ([413, 200] if recorded else [200])
    client.close()


def test_the_upload_limit_is_not_the_limit_of_other_endpoints(
    small_uploads: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    prompt = "x" * (2 * 1024 * 1024)  # beyond the upload cap, within TOLLGATE_MAX_BODY_BYTES
    response = httpx.post(
        small_uploads.base_url + "/v1/embeddings",
        headers=tenants["alice"].headers,
        json={"model": "embed-test", "input": prompt},
        timeout=10,
    )
    assert response.status_code == 200
    one_row(response.headers["x-request-id"])


# --- what every endpoint shares ------------------------------------------------------------------


def _embeddings(client: openai.OpenAI, model: str) -> Any:
    return client.embeddings.create(model=model, input="hello")


def _images(client: openai.OpenAI, model: str) -> Any:
    return client.images.generate(model=model, prompt="a cat")


def _speech(client: openai.OpenAI, model: str) -> Any:
    with client.audio.speech.with_streaming_response.create(
        model=model, voice="alloy", input="hello"
    ) as response:
        return response.read()


def _transcription(client: openai.OpenAI, model: str) -> Any:
    return client.audio.transcriptions.create(model=model, file=("a.wav", wav(1), "audio/wav"))


OPERATIONS: dict[str, tuple[Callable[[openai.OpenAI, str], Any], str]] = {
    "embeddings": (_embeddings, "embeddings"),
    "images": (_images, "images.generations"),
    "speech": (_speech, "audio.speech"),
    "transcription": (_transcription, "audio.transcriptions"),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_upstream_failure_is_502_and_recorded(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
    operation: str,
) -> None:
    make_call, endpoint = OPERATIONS[operation]
    with pytest.raises(openai.InternalServerError) as caught:
        make_call(sdk(tenants["charlie"]), "fail-500")
    check_error(caught.value.response, 502, code="upstream_unavailable", param=None)
    row = one_row(caught.value.response.headers["x-request-id"])
    assert (row.endpoint, row.status_code, row.error_type, row.cost_usd) == (
        endpoint,
        502,
        "upstream_unavailable",
        0,
    )


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_chat_model_is_400_for_other_operations(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
    operation: str,
) -> None:
    make_call, endpoint = OPERATIONS[operation]
    with pytest.raises(openai.BadRequestError) as caught:
        make_call(sdk(tenants["charlie"]), "gpt-test")
    error = check_error(caught.value.response, 400, code="unsupported_operation", param="model")
    assert error["message"] == f"The model `gpt-test` does not support {operation}."
    row = one_row(caught.value.response.headers["x-request-id"])
    assert (row.endpoint, row.status_code) == (endpoint, 400)


def test_models_say_what_they_serve(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[[TenantKey], openai.OpenAI],
) -> None:
    client = sdk(tenants["alice"])
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    operations = {model.id: model.operations for model in raw.parse().data}  # type: ignore[attr-defined]
    assert operations["tts-test"] == ["speech"]
    assert operations["gpt-test"] == ["chat"]
    assert client.models.retrieve("stt-test").operations == ["transcription"]  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tts-test", messages=[{"role": "user", "content": "hi"}]
        )
    check_error(caught.value.response, 400, code="unsupported_operation", param="model")
    one_row(caught.value.response.headers["x-request-id"])
