"""Request bodies and headers that used to stall the gateway or answer 500: nesting, item counts,
header sizes and non-ASCII header values, through the real ASGI app (``ApiHandler``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from asgiref.sync import sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st
from support.inprocess import ANTHROPIC_PATH, answer_everything, api_client, assert_error_shape

from conftest import TenantKey, ledger_rows
from gateway.calls.body_limits import (
    BodyLimits,
    find_violation,
    skeleton_within,
    within_upper_bounds,
)

LIMITS = BodyLimits(max_depth=128, max_items=10_000)
USER = {"role": "user", "content": "x"}


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def deep_schema(depth: int) -> dict[str, Any]:
    """A tool's JSON schema, ``depth`` properties deep (twice that in JSON levels)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


async def send(who: TenantKey, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    async with api_client() as client:
        return await client.post(
            path,
            content=content,
            headers={
                "authorization": f"Bearer {who.raw}",
                "content-type": "application/json",
                **headers,
            },
        )


async def rows(current: Any) -> list[tuple[int, str]]:
    return [(r.status_code, r.error_type) for r in await sync_to_async(ledger_rows)(current)]


async def test_300_nested_arrays_in_messages_are_400_not_a_recursion_error(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    current = gateway_runtime(answer_everything)
    content = nested(300)  # deeper than orjson.dumps goes
    body = json.dumps(
        {"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    ).encode()
    response = await send(tenants["alice"], ANTHROPIC_PATH, body)
    assert response.status_code == 400
    assert_error_shape(ANTHROPIC_PATH, response)
    message = response.json()["error"]["message"]
    assert "128 levels" in message and "'messages'" in message and "MAX_JSON_DEPTH" in message
    assert await rows(current) == [(400, "body_too_complex")]  # the call still has its row


async def test_deep_tool_schemas_and_brackets_in_strings_pass(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    gateway_runtime(answer_everything)
    schema = deep_schema(48)  # the body nests 100 levels deep, well past what agents send
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    text = "[{" * 50_000  # brackets inside a string are no nesting at all
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], "tools": [tool]}
    response = await send(tenants["alice"], "/v1/chat/completions", body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "field", "item"),
    [
        ("/v1/chat/completions", "messages", USER),
        (ANTHROPIC_PATH, "messages", USER),
        ("/v1/embeddings", "input", "x"),
    ],
)
async def test_ten_thousand_items_pass_and_one_more_is_400_naming_the_field(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str, field: str, item: object
) -> None:
    gateway_runtime(answer_everything)
    model = "embed-test" if field == "input" else "echo"
    body = {"model": model, "max_tokens": 5, field: [item] * 10_000}
    assert (await send(tenants["alice"], path, body)).status_code == 200
    response = await send(tenants["alice"], path, {**body, field: [item] * 10_001})
    assert response.status_code == 400
    assert_error_shape(path, response)
    error = response.json()["error"]
    assert f"'{field}'" in error["message"] and "10000 items" in error["message"]
    if path != ANTHROPIC_PATH:
        assert (error["param"], error["code"]) == (field, "body_too_complex")


async def test_a_million_messages_are_refused_before_parsing(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    # Regression: 30 MB of tiny messages held the event loop for 3.6 s while it was parsed.
    current = gateway_runtime(answer_everything)
    body = b'{"model":"echo","messages":[' + b",".join([orjson.dumps(USER)] * 1_000_000) + b"]}"
    response = await send(tenants["alice"], "/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert await rows(current) == [(400, "body_too_complex")]


@pytest.mark.parametrize("path", ["/v1/chat/completions", ANTHROPIC_PATH])
async def test_a_body_of_too_many_values_in_all_is_400_though_no_array_is_too_long(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str
) -> None:
    """Each array under TOLLGATE_MAX_ITEMS, but 9,000 messages of two parts each: their parse
    alone would hold the event loop for tens of milliseconds, so the whole is bounded too."""
    current = gateway_runtime(answer_everything)
    part = {"type": "text", "text": "x"}
    message = {"role": "user", "content": [part, part]}
    body = {"model": "echo", "max_tokens": 5, "messages": [message] * 9_000}
    response = await send(tenants["alice"], path, body)
    assert response.status_code == 400
    assert_error_shape(path, response)
    assert "50000 JSON values" in response.json()["error"]["message"]
    assert await rows(current) == [(400, "body_too_complex")]
    fits = {**body, "messages": [message] * 4_000}
    assert (await send(tenants["alice"], path, fits)).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", ANTHROPIC_PATH, "/v1/embeddings"])
@pytest.mark.parametrize(
    "header", ["authorization", "x-api-key", "anthropic-version", "anthropic-beta"]
)
async def test_a_non_ascii_header_is_400_naming_it_not_a_500(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str, header: str
) -> None:
    # Regression: httpx raised UnicodeEncodeError forwarding a non-ASCII anthropic-version.
    gateway_runtime(answer_everything)
    async with api_client() as client:
        response = await client.post(
            path,
            content=orjson.dumps({"model": "echo", "max_tokens": 5, "messages": [USER]}),
            headers=[
                ("authorization", f"Bearer {tenants['alice'].raw}".encode()),
                (header, "2023-06-01é".encode()),
            ],
        )
    assert response.status_code == 400
    assert_error_shape(path, response)
    assert f"'{header}'" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", ANTHROPIC_PATH, "/v1/models"])
async def test_headers_over_64_kib_are_431(
    tenants: dict[str, TenantKey], gateway_runtime: Any, path: str
) -> None:
    gateway_runtime(answer_everything)
    async with api_client() as client:
        response = await client.post(
            path, content=b"{}", headers={"authorization": "Bearer " + "k" * 8 * 1024 * 1024}
        )
        small = await client.get(
            "/v1/models", headers={**tenants["alice"].headers, "x-note": "n" * 60_000}
        )
    assert response.status_code == 431
    assert_error_shape(path, response)
    assert small.status_code == 200  # up to the limit, headers are fine


# --- the checks themselves ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(alphabet='[]{},"\\ab\x00é'),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=60,
)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(value=json_values, depth=st.integers(1, 6), items=st.integers(1, 6))
def test_the_skeleton_and_the_tokenizer_agree_with_a_parse(
    value: Any, depth: int, items: int
) -> None:
    """For any JSON, the C-speed skeleton, the tokenizer and a walk of the parsed value agree
    (small limits, so that the generated values cross them)."""
    limits = BodyLimits(max_depth=depth, max_items=items)
    body = orjson.dumps(value)
    expected = shape_within(value, limits, 1)
    assert skeleton_within(body, limits) == expected
    assert (find_violation(body, limits) is None) == expected
    if within_upper_bounds(body, limits):
        assert expected


def shape_within(value: Any, limits: BodyLimits, level: int) -> bool:
    if not isinstance(value, list | dict):
        return True
    children = list(value.values()) if isinstance(value, dict) else value
    return (
        level <= limits.max_depth
        and len(children) <= limits.max_items
        and all(shape_within(child, limits, level + 1) for child in children)
    )
