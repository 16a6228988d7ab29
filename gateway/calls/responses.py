"""``/v1/responses``: OpenAI's Responses API, for every chat model.

A model whose provider serves the API itself (``responses = true`` in config.toml: OpenAI) gets
the request as it is and its answer goes back as it came, usage read on the way ("native").
Every other model is reached through chat completions ("bridged", ``providers.responses``): the
request is translated, and the answer, streams included, translated back into the Responses
shape and event grammar. Hosted tools a bridged backend cannot run are left out of its call and
listed in ``x-tollgate-dropped-tools``.

State: with ``store`` (the API's default) a bridged response is kept for its tenant with the
conversation up to it (``StoredResponse``), so that ``previous_response_id`` works for any model;
a native response's id is kept with its provider, and its ``GET``/``DELETE`` go there. Another
tenant's id is a 404. ``store: false`` (Codex sends it) keeps nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils import timezone

from gateway.calls.metering import StreamMeter, tools_of
from gateway.calls.parsing import validate_request
from gateway.calls.pipeline import Call, OpenStream, Relay, open_stream
from gateway.models import StoredResponse
from gateway.outage import read_database
from gateway.storable import storable_json
from providers.base import ChatRequest
from providers.errors import GatewayError, InvalidRequest, ModelNotFound, ServiceUnavailable
from providers.factory import Route
from providers.ids import time_ordered_hex
from providers.openai import OpenAIProvider
from providers.responses.request import BridgedRequest, to_chat
from providers.responses.response import from_chat
from providers.responses.stream import ChatToResponsesStream
from providers.types import NativeEvent, StreamChunk, Usage

log = logging.getLogger("tollgate.responses")

DROPPED_TOOLS_HEADER = "x-tollgate-dropped-tools"
ID_MAX_CHARS = StoredResponse._meta.get_field("id").max_length or 0
"""The longest response id the gateway keeps (its column's length)."""


def is_native(route: Route) -> bool:
    provider = route.provider
    return isinstance(provider, OpenAIProvider) and provider.config.responses


async def create(call: Call, request: HttpRequest) -> HttpResponseBase:
    body = await call.parse_json(request.body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(body.get("input"), str | list) and body.get("previous_response_id") is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    call.stream = stream
    previous = await _previous(call, body.get("previous_response_id"))
    history = previous.conversation if previous is not None else []
    # The history is replayed before the input, tool calls and their outputs included: counted
    # as an input of items is, every item (a call's arguments, an output's text) and not only
    # the messages' "content" (``gateway.calls.metering``).
    replayed = [history] if history else []
    call.prompt = [body.get("instructions"), *replayed, body.get("input"), *tools_of(body, "tools")]
    call.keep_affinity(body)
    call.resolve(model)
    await call.admit_prompt(body.get("max_output_tokens"))
    turn = Turn(call, body, history, previous)
    response: HttpResponseBase
    if stream:
        relay = await call.upstream(turn.open)
        response = call.answer_stream(relay, turn.error_event)
    else:
        content, usage = await call.upstream(turn.ask)
        response = call.answer_json(content, usage)
    if turn.dropped_tools:
        response[DROPPED_TOOLS_HEADER] = ", ".join(turn.dropped_tools)
    return response


async def _previous(call: Call, response_id: Any) -> StoredResponse | None:
    """The stored response a request continues from; 400 naming it when the tenant has none."""
    if response_id is None:
        return None
    if not isinstance(response_id, str):
        raise InvalidRequest(
            "'previous_response_id' must be a string.", param="previous_response_id"
        )
    tenant = call.caller.tenant_id
    stored = None
    if keepable_id(response_id):
        stored = await read_database(
            lambda: StoredResponse.objects.filter(id=response_id, tenant_id=tenant).first(),
            "the stored responses",
        )
    if stored is None:
        raise InvalidRequest(
            f"Previous response with id '{response_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    if stored.native:
        raise InvalidRequest(
            f"Previous response '{response_id}' was made by a model that keeps its own state: "
            "continue it with that model.",
            param="previous_response_id",
        )
    return stored


class Turn:
    """One Responses request, sent along a route: as it is to an upstream that serves the API,
    bridged through chat completions elsewhere; then kept, when ``store`` asks for it."""

    def __init__(
        self,
        call: Call,
        body: dict[str, Any],
        history: list[dict[str, Any]],
        previous: StoredResponse | None,
    ) -> None:
        self.call = call
        self.body = body
        self.history = history
        self.store = body.get("store", True) is not False
        self.response_id = "resp_" + time_ordered_hex()  # stored: its key sorts by time
        self.created_at = int(time.time())
        self._bridged: BridgedRequest | None = None
        self._chat: ChatRequest | None = None
        self.dropped_tools: list[str] = []

    def bridged(self) -> tuple[BridgedRequest, ChatRequest]:
        """The request as a chat completion, translated once however many routes need it."""
        if self._bridged is None or self._chat is None:
            self._bridged = to_chat(self.body, self.history)
            self.dropped_tools = self._bridged.dropped_tools
            self._chat = validate_request(ChatRequest, self._bridged.chat)
        return self._bridged, self._chat

    def native_body(self) -> dict[str, Any]:
        if self.history:
            # A bridged conversation continued on a native model: the history goes as input.
            items = self.body.get("input")
            turn = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
            body = {**self.body, "input": [*self.history, *turn]}
            body.pop("previous_response_id", None)
            return body
        return self.body

    # --- JSON ------------------------------------------------------------------------------------

    async def ask(self, route: Route) -> tuple[bytes, Usage]:
        provider = route.provider
        if is_native(route):
            assert isinstance(provider, OpenAIProvider)
            raw, usage = await provider.responses(self.native_body(), route.upstream_model)
            await self._keep_native(raw, route)
            return raw, usage
        bridged, chat = self.bridged()
        answer = await provider.chat(chat, route.upstream_model)
        response = from_chat(
            answer.body, self.body, bridged.tools, answer.usage, self.response_id, self.created_at
        )
        await self._keep(response)
        return orjson.dumps(response), answer.usage

    # --- streams ---------------------------------------------------------------------------------

    async def open(self, route: Route) -> Relay:
        provider = route.provider
        meter = StreamMeter(self.call.estimate_prompt_tokens)
        if is_native(route):
            assert isinstance(provider, OpenAIProvider)
            events = provider.responses_stream(self.native_body(), route.upstream_model)
            native = await open_stream(events, route)
            return Relay(native, self._passed_through(native, meter, route), meter)
        bridged, chat = self.bridged()
        chunks = provider.stream(chat, route.upstream_model)
        stream = await open_stream(chunks, route)
        translator = ChatToResponsesStream(
            self.body, bridged.tools, self.response_id, self.created_at
        )
        self.translator = translator
        return Relay(stream, self._translated(stream, meter, translator), meter)

    async def _passed_through(
        self, stream: OpenStream[NativeEvent], meter: StreamMeter, route: Route
    ) -> AsyncGenerator[bytes, None]:
        event = stream.first
        kept = False  # an upstream that announced its response twice has it kept once
        while event is not None:
            if event.usage is not None:
                meter.usage = event.usage
            meter.content_chunks += event.is_delta
            if event.raw.startswith(b"event: response.failed"):
                meter.failure = (502, "upstream_error", _failure_message(event.raw))
            elif event.raw.startswith(b"event: response.created") and not kept:
                kept = True
                await self._keep_native_event(event.raw, route)
            yield event.raw
            event = await anext(stream.rest, None)

    async def _translated(
        self,
        stream: OpenStream[StreamChunk],
        meter: StreamMeter,
        translator: ChatToResponsesStream,
    ) -> AsyncGenerator[bytes, None]:
        for event in translator.start():
            yield sse(event)
        chunk = stream.first
        while chunk is not None:
            meter.observe(chunk)
            for event in translator.feed(chunk.payload, chunk.usage):
                yield sse(event)
            chunk = await anext(stream.rest, None)
        closing = translator.finish()
        await self._keep(translator.response)  # kept before the client learns it is complete
        for event in closing:
            yield sse(event)

    def error_event(self, error: GatewayError) -> bytes:
        """A failure once the stream has started: ``response.failed`` when the response was
        announced (bridged), else an ``error`` event (as OpenAI sends)."""
        translator: ChatToResponsesStream | None = getattr(self, "translator", None)
        if translator is not None:
            return b"".join(
                sse(event) for event in translator.fail(error.message, error.code or error.type)
            )
        return sse(
            {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        )

    # --- state -----------------------------------------------------------------------------------

    async def _keep(self, response: dict[str, Any]) -> None:
        if not self.store:
            return
        items = self.body.get("input")
        turn = (
            [{"role": "user", "content": items, "type": "message"}]
            if isinstance(items, str)
            else list(items or [])
        )
        if self.body.get("instructions"):
            turn.insert(
                0, {"type": "message", "role": "system", "content": self.body["instructions"]}
            )
        stored = StoredResponse(
            id=response["id"],
            tenant_id=self.call.caller.tenant_id,
            model=str(self.body.get("model", ""))[:200],
            provider=self.call.route.provider_name if self.call.route else "",
            body=response,
            input_items=turn,
            conversation=[*self.history, *turn, *response.get("output", [])],
        )
        await _save(stored)

    async def _keep_native(self, raw: bytes, route: Route) -> None:
        if not self.store:
            return
        try:
            response_id = orjson.loads(raw).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        await self._keep_native_id(response_id, route)

    async def _keep_native_event(self, raw: bytes, route: Route) -> None:
        if not self.store:
            return
        data = raw.split(b"\ndata: ", 1)[-1]
        try:
            response_id = (orjson.loads(data).get("response") or {}).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        await self._keep_native_id(response_id, route)

    async def _keep_native_id(self, response_id: Any, route: Route) -> None:
        if not isinstance(response_id, str) or not response_id:
            return
        if not keepable_id(response_id):
            log.warning(
                "a response of %s was not stored: its id (%d characters, %r...) is not one "
                "the gateway can keep",
                route.provider_name,
                len(response_id),
                response_id[:20],
            )
            return
        await _save(
            StoredResponse(
                id=response_id,
                tenant_id=self.call.caller.tenant_id,
                model=str(self.body.get("model", ""))[:200],
                provider=route.provider_name,
                native=True,
            )
        )


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def _save(stored: StoredResponse) -> None:
    """Keep a response before its caller learns it is complete (a ``previous_response_id`` may
    follow at once). A failure is logged, not the caller's: its answer stands, and a later
    ``previous_response_id`` naming it gets a 400. A database outage is not logged per call
    (it was a traceback each): ``gateway.outage`` logs it once per interval. An id already
    kept (an upstream that gave two responses one id) is a line, not a traceback; so is a
    value the database refuses, but a NUL in a bridged response's text (PostgreSQL's JSON takes
    none) is first replaced, as the ledger mends its rows, and the response kept."""

    def insert() -> None:
        # Inside a transaction (never the API's: it runs in autocommit), a savepoint, so that a
        # refused insert leaves the transaction usable for the retry; else no BEGIN and COMMIT
        # around every stored response.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            stored.save(force_insert=True)

    try:
        try:
            await read_database(insert, "the stored responses")
        except DataError:
            if not _mend_text(stored):
                raise
            await read_database(insert, "the stored responses")
    except ServiceUnavailable:
        pass
    except IntegrityError:
        log.warning("response %r was not stored: its id is already kept", stored.id)
    except DataError as exc:
        first_line = str(exc).strip().partition("\n")[0]
        log.warning(
            "response %r was not stored: the database refused it (%s)", stored.id, first_line
        )
    except Exception:
        log.exception("response %r was not stored", stored.id)


def _mend_text(stored: StoredResponse) -> bool:
    """Mend the text of a bridged response's JSON as the ledger's rows are (a NUL becomes
    U+FFFD: ``gateway.storable``); whether any needed it."""
    found = False
    for name in ("body", "input_items", "conversation"):
        value = getattr(stored, name)
        mended = storable_json(value)
        if mended != value:
            setattr(stored, name, mended)
            found = True
    return found


def keepable_id(response_id: str) -> bool:
    """Whether a response id can be kept, and found again, as it is: at most ``ID_MAX_CHARS``
    characters, no NUL (PostgreSQL's text refuses one), and one path segment of
    ``/v1/responses/{id}`` (no ``/``; not ``.`` or ``..``, which URLs resolve away)."""
    return (
        0 < len(response_id) <= ID_MAX_CHARS
        and "\x00" not in response_id
        and "/" not in response_id
        and response_id not in (".", "..")
    )


# --- GET and DELETE /v1/responses/{id} -------------------------------------------------------


async def stored_of(tenant_id: int, response_id: str) -> StoredResponse:
    """The tenant's stored response ``response_id``; 404 when it has none (an id no response
    could be kept under is not looked for)."""
    stored = None
    if keepable_id(response_id):
        stored = await read_database(
            lambda: StoredResponse.objects.filter(id=response_id, tenant_id=tenant_id).first(),
            "the stored responses",
        )
    if stored is None:
        raise ModelNotFound(
            f"No response found with id '{response_id}'.", param="response_id", code="not_found"
        )
    return stored


def purge_expired() -> int:
    """Delete what is older than TOLLGATE_RESPONSES_RETENTION_DAYS; how many were deleted."""
    cutoff = timezone.now() - timedelta(days=settings.TOLLGATE_RESPONSES_RETENTION_DAYS)
    deleted, _ = StoredResponse.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


def input_item_list(stored: StoredResponse) -> dict[str, Any]:
    """The response's input items as a ``ResponseItemList``, each as the API returns it: with an
    id, a status, and a message's text as content parts."""
    items = [
        _as_resource(item, f"{stored.id}_input_{n}") for n, item in enumerate(stored.input_items)
    ]
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def _as_resource(item: Any, default_id: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        item = {"type": "message", "role": "user", "content": item}
    item = {"id": item.get("id") or default_id, **item}
    kind = item.setdefault("type", "message")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": content}]
        if item.get("role") != "assistant":
            item.setdefault("status", "completed")
    elif kind in ("function_call", "function_call_output"):
        item.setdefault("status", "completed")
    return item


PURGE_SECONDS = 24 * 3600


async def purge_forever() -> None:
    """Once at startup (after a minute) and then daily: delete expired stored responses."""
    delay = 60.0
    while True:
        await asyncio.sleep(delay)
        delay = PURGE_SECONDS
        try:
            deleted = await read_database(purge_expired, "the stored responses")
        except GatewayError:
            continue  # the database is down: gateway.outage says so; next time
        if deleted:
            log.info("purged %d stored responses past their retention", deleted)


def _failure_message(raw: bytes) -> str:
    """The error message of a native ``response.failed`` event (``response.error.message``),
    for the ledger; empty when the event carries none."""
    try:
        response = orjson.loads(raw.split(b"\ndata: ", 1)[-1]).get("response") or {}
        message = (response.get("error") or {}).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return message if isinstance(message, str) else ""
