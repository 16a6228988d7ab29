"""Request bodies: JSON objects refused before parsing when too large or too complex, and
validation errors as a 400 naming the offending ``param``."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from gateway.calls.body_limits import INLINE_BYTES, check_body_shape
from providers import json_text
from providers.base import PassThroughRequest
from providers.errors import InvalidRequest

RequestT = TypeVar("RequestT", bound=PassThroughRequest)


async def parse_json_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body. A body over the nesting and item limits is refused before it
    is parsed (``gateway.calls.body_limits``)."""
    await check_body_shape(body)
    try:
        data = json_text.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a JSON object.",
            code="invalid_json",
        ) from None
    if len(body) > INLINE_BYTES:
        # Its parse held the event loop for up to ~45 ms (32 MB): let the other callers run
        # before the next stretch (validation, encoding the body for the upstream).
        await asyncio.sleep(0)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def validate_request(request_class: type[RequestT], data: dict[str, Any]) -> RequestT:
    """Validate a decoded body; the first problem becomes a 400 naming its ``param``."""
    try:
        return request_class.from_body(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise invalid_param(param, None if first["type"] == "missing" else first["msg"]) from None


def invalid_param(param: str | None, problem: str | None = None) -> InvalidRequest:
    """A 400 naming ``param``: missing when there is no ``problem``, else invalid."""
    if problem is None:
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return InvalidRequest(
        f"Invalid value for '{param}': {problem}.", param=param, code="invalid_value"
    )
