"""The calls beyond chat and /v1/messages that the limits tests hold to the ledger
(tests/test_limits_endpoints.py, tests/test_limits_concurrency.py): ``/v1/responses`` (bridged to
either chat dialect, or native, stored or not, continuing a stored response), embeddings, images,
speech and transcriptions, on models alone or falling back to one on the second upstream
(``EndpointCall``); the models they call (``CONFIG``); and what the upstreams answer them
(``answer``)."""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_CEILING
from typing import Any

import httpx
import orjson

from conftest import MEDIA_MODELS as MEDIA_CONFIG
from gateway.calls.metering import estimate_prompt_tokens
from gateway.limits.policy import to_units
from providers.config import ModelConfig
from providers.pricing import cost_of, estimate_audio_seconds, estimate_embedding_tokens
from providers.types import Units, Usage
from support.limits_accounts import ATTEMPTS_PER_ALIAS, FIRST, SECOND, Attempt, answer_attempt
from support.limits_accounts import CONFIG as CHAT_CONFIG
from support.upstream_answers import EMBEDDINGS, RESPONSE, RESPONSE_EVENTS, encoded

NATIVE = "native.test"
CONFIG = (
    CHAT_CONFIG
    + f"""
[providers.native]
type = "openai"
base_url = "http://{NATIVE}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
responses = true

[models."gpt-native"]
provider = "native"
upstream_model = "gpt-native"
input_per_mtok = 1.5
output_per_mtok = 7.5

[models."native-then-gpt"]
provider = "native"
upstream_model = "gpt-native"
fallbacks = ["gpt-second"]
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."embed-then-second"]
provider = "fake"
upstream_model = "fake-embed"
operations = ["embeddings"]
fallbacks = ["embed-second"]
input_per_mtok = 0.02

[models."embed-second"]
provider = "second-openai"
upstream_model = "second-embed"
operations = ["embeddings"]
input_per_mtok = 0.04

[models."image-then-second"]
provider = "fake"
upstream_model = "fake-dall-e"
operations = ["images"]
fallbacks = ["image-second"]
per_image = 0.04
image_prices = {{ "1024x1024/hd" = 0.08 }}

[models."image-second"]
provider = "second-openai"
upstream_model = "second-dall-e"
operations = ["images"]
per_image = 0.02
image_prices = {{ "1024x1024/hd" = 0.16 }}

[models."tts-then-second"]
provider = "fake"
upstream_model = "fake-tts"
operations = ["speech"]
fallbacks = ["tts-second"]
per_mchar = 15.0

[models."tts-second"]
provider = "second-openai"
upstream_model = "second-tts"
operations = ["speech"]
per_mchar = 30.0

[models."stt-then-second"]
provider = "fake"
upstream_model = "fake-whisper"
operations = ["transcription"]
fallbacks = ["stt-second"]
per_minute = 0.006

[models."stt-second"]
provider = "second-openai"
upstream_model = "second-whisper"
operations = ["transcription"]
per_minute = 0.012
"""
)
"""Beside ``mock_config``'s media models (``embed-test``, ``image-test``, ``tts-test``,
``stt-test``, on ``FIRST``): the chat and /v1/messages tests' models (``CHAT_CONFIG``: a model
of each chat dialect on ``FIRST``, ``gpt-then-claude`` falling back to ``SECOND``...), one
served by an upstream of the Responses API itself on ``NATIVE`` (and one there falling back to a
bridged model on ``SECOND``), and a model of each media operation on ``FIRST`` falling back to
one on ``SECOND`` at other prices. Every price is a whole number of the budget counters' units
(1e-8 USD) per token, image, character or millisecond of audio: the counters are held to the
ledger exactly."""
PRICES = {
    name: ModelConfig.model_validate(model)
    for text in (MEDIA_CONFIG, CONFIG)
    for name, model in tomllib.loads(text)["models"].items()
}
HOSTS = (FIRST, SECOND, NATIVE)
RESPONSES, EMBED, IMAGES = "/v1/responses", "/v1/embeddings", "/v1/images/generations"
SPEECH, TRANSCRIBE = "/v1/audio/speech", "/v1/audio/transcriptions"
MODELS = {
    RESPONSES: ["gpt-alone", "claude-alone", "gpt-native"],
    EMBED: ["embed-test"],
    IMAGES: ["image-test"],
    SPEECH: ["tts-test"],
    TRANSCRIBE: ["stt-test"],
}
"""Each endpoint's models alone."""
FALLBACKS = {
    RESPONSES: {
        "gpt-then-claude": "claude-second",
        "claude-then-gpt": "gpt-second",
        "native-then-gpt": "gpt-second",
    },
    EMBED: {"embed-then-second": "embed-second"},
    IMAGES: {"image-then-second": "image-second"},
    SPEECH: {"tts-then-second": "tts-second"},
    TRANSCRIBE: {"stt-then-second": "stt-second"},
}
"""Each endpoint's models with a fallback (on ``SECOND``), and their fallback."""
KINDS = [(RESPONSES, False), (RESPONSES, True), (EMBED, False), (IMAGES, False)]
KINDS += [(SPEECH, False), (TRANSCRIBE, False)]
"""Each endpoint, and whether its calls stream (speech streams without saying so)."""
FAILING_FIRST = [Attempt(status=500), Attempt(status=429), Attempt(refused=True)]
"""What a first deployment that a call falls back from answers every attempt: a 5xx, a 429,
or no connection at all."""


# --- what the upstreams answer --------------------------------------------------------------------

_native_ids = itertools.count()


def answer(request: httpx.Request, attempt: Attempt) -> httpx.Response:
    """``attempt``'s answer, whole, to a request of any endpoint: ``prompt`` and ``completion``
    are the tokens it used (a transcription's seconds of audio: ``prompt``); a native response
    has an id of its own (a stored one is kept under it)."""
    path = request.url.path
    if path.endswith(("/chat/completions", "/messages")):  # a bridged response's
        return answer_attempt(request, attempt)
    if attempt.status != 200:
        error = {"message": "no", "type": "api_error", "param": None, "code": None}
        return httpx.Response(attempt.status, json={"error": error})
    prompt, completion = attempt.prompt, attempt.completion
    if path.endswith("/responses"):
        usage = {"input_tokens": prompt, "output_tokens": completion}
        usage["total_tokens"] = prompt + completion
        response = {**RESPONSE, "usage": usage}
        own_id = b'"resp_native_%d"' % next(_native_ids)
        if orjson.loads(request.content).get("stream") is not True:
            whole = orjson.dumps(response).replace(b'"resp_1"', own_id)
            return httpx.Response(200, content=whole, headers={"content-type": "application/json"})
        *events, (name, completed) = RESPONSE_EVENTS
        events.append((name, {**completed, "response": response}))
        stream = b"".join(encoded(event) for event in events).replace(b'"resp_1"', own_id)
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})
    if path.endswith("/embeddings"):
        return httpx.Response(
            200, json={**EMBEDDINGS, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        )
    if path.endswith("/images/generations"):
        images = [{"b64_json": "AA=="}] * orjson.loads(request.content).get("n", 1)
        return httpx.Response(200, json={"created": 1, "data": images})
    if path.endswith("/audio/speech"):
        audio = b"\n\n".join([b"ID3" + bytes(100)] * 4)  # four parts, for a cut
        return httpx.Response(200, content=audio, headers={"content-type": "audio/mpeg"})
    seconds = {"type": "duration", "seconds": prompt}
    return httpx.Response(200, json={"text": "hi", "usage": seconds})


# --- the calls ------------------------------------------------------------------------------------

Stored = tuple[str, list[Any]]
"""A stored response's id, and the conversation the gateway keeps with it (which a response
continuing it replays to its upstream)."""


@dataclass(frozen=True)
class EndpointCall:
    """A call of ``path`` (streamed: ``/v1/responses`` only), what the upstream of its model
    answers its attempts (``first``) and what the second upstream answers its fallback's
    (``second``). ``size`` is its text's characters, its audio's kilobytes or its images'
    count; ``max_tokens`` a response's ``max_output_tokens``; a response is ``store``d or not,
    and may continue the stored response ``previous`` (its id and the conversation the gateway
    keeps with it, which it replays to the upstream). Its text starts with its ``mark``
    (a transcription's: its ``prompt`` field)."""

    path: str
    stream: bool
    model: str
    size: int
    max_tokens: int
    hd: bool
    first: list[Attempt]
    second: list[Attempt] = field(default_factory=list)
    store: bool = False
    follows: bool = False
    previous: Stored | None = None
    mark: str = ""

    @property
    def fallback_model(self) -> str | None:
        """The alias the call falls back to, if its model has one."""
        return FALLBACKS[self.path].get(self.model)

    @property
    def host(self) -> str:
        return NATIVE if self.model in ("gpt-native", "native-then-gpt") else FIRST

    @property
    def text(self) -> str:
        return self.mark + "x" * self.size

    @property
    def history(self) -> list[Any]:
        return self.previous[1] if self.previous is not None else []

    def plans(self, hosts: tuple[str, ...]) -> tuple[list[Attempt], ...]:
        """What each of ``hosts`` answers the call's attempts."""
        return tuple(
            self.first if host == self.host else self.second if host == SECOND else []
            for host in hosts
        )

    def options(self) -> dict[str, Any]:
        """The request's httpx options: its JSON body, or its form."""
        if self.path == TRANSCRIBE:
            audio = ("audio.mp3", bytes(1000 * self.size), "audio/mpeg")
            form = {"model": self.model} | ({"prompt": self.mark} if self.mark else {})
            return {"data": form, "files": {"file": audio}}
        body: dict[str, Any] = {"model": self.model}
        if self.path == RESPONSES:
            body |= {"input": self.text, "max_output_tokens": self.max_tokens}
            body |= {"stream": self.stream, "store": self.store}
            if self.previous is not None:
                body["previous_response_id"] = self.previous[0]
        elif self.path == EMBED:
            body["input"] = self.text
        elif self.path == IMAGES:
            body |= {"prompt": self.mark + "a cat", "n": self.size, "size": "1024x1024"}
            body["quality"] = "hd" if self.hd else "standard"
        else:
            body |= {"input": self.text, "voice": "alloy"}
        return {"json": body}

    @property
    def prompt(self) -> int:
        """A response's prompt tokens as the gateway estimates them: its input, after the
        conversation it continues, counted whole (an embedding's input tokens)."""
        if self.path == EMBED:
            return estimate_embedding_tokens(self.text)
        return estimate_prompt_tokens([None, *([self.history] if self.history else []), self.text])

    @property
    def most_used(self) -> int:
        """The most tokens (a transcription: whole seconds) an upstream may report for the call
        without it costing more than its reservation."""
        if self.path == TRANSCRIBE:
            return math.floor(estimate_audio_seconds(bytes(1000 * self.size)))
        return self.prompt if self.path in (RESPONSES, EMBED) else 0

    def asks(self, model: str) -> tuple[int, int]:
        """The tokens and the reservation (units of 1e-8 USD) the call asks of the counters on
        ``model``'s prices: as its endpoint estimates them (``gateway.calls.responses``,
        ``gateway.calls.media``)."""
        prices = PRICES[model]
        if self.path == RESPONSES:
            worst = Usage(prompt_tokens=self.prompt, completion_tokens=self.max_tokens)
            return self.prompt + self.max_tokens, to_units(cost_of(worst, prices), ROUND_CEILING)
        units = Units()
        if self.path == IMAGES:
            quality = "hd" if self.hd else "standard"
            units = Units(images=self.size, image_size="1024x1024", image_quality=quality)
        elif self.path == SPEECH:
            units = Units(characters=len(self.text))
        elif self.path == TRANSCRIBE:
            units = Units(audio_seconds=estimate_audio_seconds(bytes(1000 * self.size)))
        prompt = self.prompt if self.path == EMBED else 0
        worst = Usage(prompt_tokens=prompt, completion_tokens=0)
        return prompt, to_units(cost_of(worst, prices, units), ROUND_CEILING)

    @property
    def falls_back(self) -> bool:
        """Whether the router moves the call to its model's fallback: every attempt on its first
        upstream failed so that the router retries it."""
        tried = [self.first[min(n, len(self.first) - 1)] for n in range(ATTEMPTS_PER_ALIAS)]
        return self.fallback_model is not None and all(attempt.retried for attempt in tried)
