"""What the end-to-end suites share: the official OpenAI schemas to validate answers against, what
the fake upstream reports and what it costs, and helpers to call the gateway and read its ledger.

The ledger is written by a background thread, in FIFO order. To assert that a call wrote *no* row
(or exactly one), ``settle`` makes one more call and waits for its row: every row queued before it
is then in the database.
"""

from __future__ import annotations

import functools
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from conftest import GatewayServer, TenantKey, wait_for_rows
from gateway.models import UsageRecord

# --- the official schemas ------------------------------------------------------------------------

SCHEMAS_PATH = Path(
    os.environ.get("OPENAI_SCHEMAS", Path(__file__).parent.parent / "spec" / "openai_schemas.json")
)
"""JSON Schema bundle extracted from openai/openai-openapi: entry points under ``schemas``, each a
``$ref`` into ``$defs``."""
_BUNDLE_URI = "urn:openai:schemas"
_BUNDLE = json.loads(SCHEMAS_PATH.read_text())
_REGISTRY: Registry = Registry().with_resource(_BUNDLE_URI, Resource.from_contents(_BUNDLE))


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    assert schema_name in _BUNDLE["schemas"], schema_name
    return Draft202012Validator(
        {"$ref": f"{_BUNDLE_URI}#/schemas/{schema_name}"}, registry=_REGISTRY
    )


def validate(schema_name: str, instance: Any) -> None:
    """Validate against ``schemas/<name>`` of the bundle (its ``$ref``s resolve inside it)."""
    _validator(schema_name).validate(instance)


# --- what the fake upstream reports, and what it costs --------------------------------------------

PROMPT, COMPLETION, CACHED, REASONING = 11, 5, 3, 2
# gpt-test: input 1.0, cache_read 0.5, output 2.0 USD per Mtok; cached input at its own rate.
GPT_TEST_COST = (
    Decimal(PROMPT - CACHED) * 1 + Decimal(CACHED) * Decimal("0.5") + Decimal(COMPLETION) * 2
) / Decimal(1_000_000)
STREAM_TEXT = "tok0 tok1 tok2 tok3 tok4 "
HELLO = [{"role": "user", "content": "Say hello."}]
ERROR_KEYS = {"message", "type", "param", "code"}


def chat_url(server: GatewayServer) -> str:
    return server.base_url + "/v1/chat/completions"


def settle(server: GatewayServer, who: TenantKey) -> UsageRecord:
    """Make one call as ``who`` and wait for its row: rows queued before it are then written."""
    response = httpx.post(
        chat_url(server),
        headers=who.headers,
        json={"model": "gpt-test", "messages": HELLO},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    rows = wait_for_rows(1, request_id=response.headers["x-request-id"])
    assert len(rows) == 1
    return rows[0]


UNCHECKED: Any = object()
"""``check_error(param=UNCHECKED)``: any ``param`` (it must still be present)."""


def check_error(
    response: httpx.Response,
    status: int,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error answer: the status, JSON, the spec's ErrorResponse, all four keys."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate("ErrorResponse", body)
    error = body["error"]
    assert set(error) == ERROR_KEYS
    assert error["message"]
    if type is not None:
        assert error["type"] == type
    if code is not None:
        assert error["code"] == code
    if param is not UNCHECKED:
        assert error["param"] == param
    return error


def sse_events(text: str) -> list[str]:
    """The ``data`` of each SSE event, in order (the gateway sends one data line per event)."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert all(line.startswith("data: ") for line in lines), block
        events.append("\n".join(line[6:] for line in lines))
    return events


def rows_of(who: TenantKey) -> list[UsageRecord]:
    return list(UsageRecord.objects.filter(tenant=who.tenant).order_by("id"))


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]
