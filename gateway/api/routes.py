"""The REST API under ``/v1``: OpenAI's endpoints, and Anthropic's ``/v1/messages``.

Each route names its endpoint and the module of its dialect (``gateway.calls``), which the call
pipeline runs; the tenant key is checked once for every route (``TenantKey``, the API's auth).
Every error leaves in the API's shape (Anthropic's on ``/v1/messages``, else OpenAI's
``{"error": {"message", "type", "param", "code"}}``) with the status OpenAI would use, including
errors Django or django-ninja raise on their own (unknown path, wrong method) and our own bugs
(500, logged, never a traceback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from ninja import NinjaAPI
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security.base import AuthBase

from gateway.api.errors import error_response, error_response_for
from gateway.calls import chat, media, messages, responses
from gateway.calls.pipeline import Steps, serve
from gateway.outage import read_database
from gateway.runtime import get_runtime
from gateway.tenants.auth import Caller, caller_of
from gateway.usage.endpoints import Endpoint
from gateway.usage.reports import usage_response
from providers.errors import GatewayError, InternalError, InvalidRequest, ModelNotFound
from providers.openai import OpenAIProvider

log = logging.getLogger("tollgate.api")


class TenantKey(AuthBase):
    """A tenant's API key, as ``Authorization: Bearer``; with ``x_api_key`` (Anthropic's API)
    also as ``x-api-key``, which wins. A refusal (401, 429 past the address's allowance of
    failures, 503 while the database is needed and down) is answered in the API's error shape."""

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __init__(self, x_api_key: bool = False) -> None:
        self.x_api_key = x_api_key
        super().__init__()

    async def authenticate(self, request: HttpRequest) -> Caller:
        return await caller_of(request, x_api_key=self.x_api_key)

    def __call__(self, request: HttpRequest) -> Any:
        return self.authenticate(request)


api = NinjaAPI(
    title="Tollgate",
    version="1",
    description="A multi-tenant, OpenAI-compatible LLM gateway.",
    urls_namespace="v1",
    docs_url=None,
    auth=(TENANT_KEY := TenantKey(x_api_key=True)),  # Bearer, or x-api-key (Anthropic's clients)
)

_STARTED = int(time.time())


def _json(data: object, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


CALLS: dict[str, tuple[Endpoint, Steps]] = {
    "/v1/chat/completions": (Endpoint.CHAT_COMPLETIONS, chat.completions),
    "/v1/messages": (Endpoint.MESSAGES, messages.create),  # Anthropic's Messages API
    # Anthropic's token count of a Messages request, for any model; not billed:
    "/v1/messages/count_tokens": (Endpoint.MESSAGES, messages.count_tokens),
    "/v1/responses": (Endpoint.RESPONSES, responses.create),  # for every chat model
    "/v1/embeddings": (Endpoint.EMBEDDINGS, media.embeddings),
    "/v1/images/generations": (Endpoint.IMAGES, media.images),
    # The audio streams through with the upstream's content type:
    "/v1/audio/speech": (Endpoint.SPEECH, media.speech),
    "/v1/audio/transcriptions": (Endpoint.TRANSCRIPTIONS, media.transcriptions),
}
"""The calls: ``POST`` to each path runs its endpoint's steps (``gateway.calls``).

``ApiHandler`` answers them with ``answer_call`` directly; the django-ninja view of each path
calls the same function, for Django's test client (and a ``GET`` is ninja's 405)."""


async def answer_call(request: HttpRequest, endpoint: Endpoint, steps: Steps) -> HttpResponseBase:
    """One call, as its ninja operation would run it, without the operation's per-request work
    (a response to merge, parameters to collect): the API's own authentication (``TENANT_KEY``:
    Bearer, or ``x-api-key``, which wins) and error answers (``api.on_exception`` and the
    handlers below)."""
    try:
        request.auth = await TENANT_KEY.authenticate(request)  # type: ignore[attr-defined]
        return await serve(request, endpoint, steps)
    except Exception as exc:
        return api.on_exception(request, exc)


def _call_view(path: str, endpoint: Endpoint, steps: Steps) -> None:
    async def view(request: HttpRequest) -> HttpResponseBase:
        return await answer_call(request, endpoint, steps)

    name = path.removeprefix("/v1/").replace("/", "_")
    api.post(path.removeprefix("/v1"), auth=None, operation_id=name, url_name=name)(view)


for _path, (_endpoint, _steps) in CALLS.items():
    _call_view(_path, _endpoint, _steps)


@api.get("/responses/{response_id}")
async def retrieve_response(request: HttpRequest, response_id: str) -> HttpResponseBase:
    return await _stored_response(request, response_id, "GET")


@api.get("/responses/{response_id}/input_items")
async def response_input_items(request: HttpRequest, response_id: str) -> HttpResponseBase:
    return await _stored_response(request, response_id, "GET", "/input_items")


@api.delete("/responses/{response_id}")
async def delete_response(request: HttpRequest, response_id: str) -> HttpResponseBase:
    return await _stored_response(request, response_id, "DELETE")


async def _stored_response(
    request: HttpRequest, response_id: str, method: str, suffix: str = ""
) -> HttpResponseBase:
    """A response the caller's tenant stored: from the gateway, or from the upstream that keeps
    it (a native one). Another tenant's id is a 404."""
    caller: Caller = request.auth  # type: ignore[attr-defined]
    stored = await responses.stored_of(caller.tenant_id, response_id)
    if stored.native:
        provider = get_runtime().factory.get(stored.provider)
        if not isinstance(provider, OpenAIProvider):
            raise ModelNotFound(f"No response found with id '{response_id}'.", param="response_id")
        raw = await provider.stored_response(method, response_id, suffix)
        if method == "DELETE":
            await read_database(stored.delete, "the stored responses")
        return HttpResponse(raw, content_type="application/json")
    if method == "DELETE":
        await read_database(stored.delete, "the stored responses")
        return responses.json_response({"id": response_id, "object": "response", "deleted": True})
    if suffix:
        return responses.json_response(responses.input_item_list(stored))
    return responses.json_response(stored.body)


def _model_entry(name: str, owner: str, operations: Sequence[str]) -> dict[str, object]:
    """OpenAI's four Model fields, and what the model may be called for."""
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": owner,
        "operations": list(operations),
    }


@api.get("/models")
async def list_models(request: HttpRequest) -> HttpResponse:
    """The models the caller may use (its tenant's and its key's allow-lists)."""
    caller: Caller = request.auth  # type: ignore[attr-defined]
    current = get_runtime()
    names = [name for name in current.config.models if caller.limits.allows(name, current.factory)]
    if "anthropic-version" in request.headers:  # an Anthropic client discovering models
        return _json(_anthropic_model_list(names))
    data = [
        _model_entry(
            name,
            current.config.models[name].deployment_list()[0].provider,
            current.config.models[name].operations,
        )
        for name in names
    ]
    return _json({"object": "list", "data": data})


def _anthropic_model_list(names: list[str]) -> dict[str, object]:
    """Anthropic's ``GET /v1/models`` shape (Claude Code's model discovery)."""
    created = datetime.fromtimestamp(_STARTED, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": created} for name in names
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }


@api.get("/models/{path:model}")
async def retrieve_model(request: HttpRequest, model: str) -> HttpResponse:
    caller: Caller = request.auth  # type: ignore[attr-defined]
    factory = get_runtime().factory
    route = factory.resolve(model)
    if not caller.limits.allows(model, factory, route):  # as if it did not exist
        raise ModelNotFound(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )
    return _json(_model_entry(model, route.provider_name, route.operations))


@api.get("/usage")
async def usage(request: HttpRequest) -> HttpResponse:
    """The calling tenant's own usage from the daily rollup: ``start``, ``end`` (YYYY-MM-DD,
    default this month, UTC) and ``group_by`` (day, model or key)."""
    caller: Caller = request.auth  # type: ignore[attr-defined]
    return _json(await usage_response(caller.tenant_id, request.GET))


@api.exception_handler(GatewayError)
def _gateway_error(request: HttpRequest, exc: GatewayError) -> HttpResponse:
    return error_response_for(request.path, exc)


@api.exception_handler(NinjaValidationError)
def _validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    return error_response(InvalidRequest("The request is not valid."))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(
        GatewayError(str(exc), status=exc.status_code, type="invalid_request_error")
    )


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return not_found(request, exc)


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.error("unhandled error on %r", request.path, exc_info=exc)
    return error_response(InternalError("The gateway failed to handle the request."))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 handler: JSON under /v1, Django's page elsewhere."""
    if request.path.startswith("/v1/"):
        return error_response_for(
            request.path,
            GatewayError(
                f"Unknown request URL: {request.method} {request.path}.",
                status=404,
                type="invalid_request_error",
                code="unknown_url",
            ),
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's 500 handler: never a traceback, OpenAI's shape under /v1."""
    if request.path.startswith("/v1/"):
        return error_response_for(
            request.path, InternalError("The gateway failed to handle the request.")
        )
    from django.views.defaults import server_error as django_server_error

    return django_server_error(request)


__all__ = ["ModelNotFound", "api", "not_found", "server_error"]
