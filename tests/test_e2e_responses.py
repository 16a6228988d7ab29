"""``/v1/responses`` through the official ``openai`` SDK, bridged to an OpenAI-compatible chat
model and to an Anthropic model behind the fake upstream: plain and streamed answers (every
event validated against the official schema), tool calls, stored responses continued with
``previous_response_id``, retrieved, listed and deleted, tenant isolation, and the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from support.e2e import validate

from conftest import GatewayServer, TenantKey, start_gateway_with_config, wait_for_rows

pytestmark = pytest.mark.e2e

MODELS = ["resp-chat", "resp-claude"]


@pytest.fixture(scope="module")
def gateway(
    django_db_setup: None, fake_upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    tmp = tmp_path_factory.mktemp("responses")
    config = Path(tmp / "responses.toml")
    config.write_text(f"""
[providers.resp-fake]
type = "openai"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[providers.resp-anthropic]
type = "anthropic"
base_url = "{fake_upstream}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"

[models."resp-chat"]
provider = "resp-fake"
upstream_model = "fake-gpt"
input_per_mtok = 1.0
output_per_mtok = 2.0

[models."resp-claude"]
provider = "resp-anthropic"
upstream_model = "claude-x"
input_per_mtok = 3.0
output_per_mtok = 15.0

[models."resp-echo"]
provider = "resp-fake"
upstream_model = "echo"

[models."resp-agent"]
provider = "resp-fake"
upstream_model = "agent"

[models."resp-cut"]
provider = "resp-fake"
upstream_model = "drop-mid-stream"
""")
    server = start_gateway_with_config(tmp, config)
    yield server
    server.stop()


def sdk(server: GatewayServer, who: TenantKey) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=who.raw, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_a_plain_response_validates_and_is_billed(
    gateway: GatewayServer, tenants: dict[str, TenantKey], model: str
) -> None:
    alice = tenants["alice"]
    raw = sdk(gateway, alice).responses.with_raw_response.create(model=model, input="Say hi")
    response = raw.parse()
    validate("Response", json.loads(raw.text))
    assert response.status == "completed" and response.output_text.startswith("tok0")
    assert response.model == model and response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens == 5
    row = wait_for_rows(1, request_id=raw.headers["x-request-id"])[0]
    assert (row.endpoint, row.requested_model, row.status_code) == ("responses", model, 200)
    assert row.prompt_tokens == response.usage.input_tokens
    assert row.completion_tokens == 5 and row.cost_usd > 0


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_response_follows_the_event_grammar(
    gateway: GatewayServer, tenants: dict[str, TenantKey], model: str
) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/responses",
        json={"model": model, "input": "Say hi", "stream": True},
        headers=tenants["alice"].headers,
        timeout=30,
    ) as answer:
        lines = answer.read().decode().splitlines()
        request_id = answer.headers["x-request-id"]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    for event in events:
        validate("ResponseStreamEvent", event)
    kinds = [event["type"] for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text.startswith("tok0")
    row = wait_for_rows(1, request_id=request_id)[0]
    assert (row.endpoint, row.stream, row.status_code, row.completion_tokens) == (
        "responses",
        True,
        200,
        5,
    )


def test_the_sdks_stream_helper_and_a_tool_round_trip(
    gateway: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    client = sdk(gateway, tenants["alice"])
    tools: list[Any] = [
        {
            "type": "function",
            "name": "exec_command",
            "description": "Run a shell command",
            "parameters": {
                "type": "object",
                "properties": {"cmd": {"type": "string"}},
                "required": ["cmd"],
            },
        }
    ]
    with client.responses.stream(model="resp-agent", input="list files", tools=tools) as stream:
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "exec_command"
    assert json.loads(calls[0].arguments) == {"cmd": "ls"}
    second = client.responses.create(
        model="resp-agent",
        tools=tools,
        input=[
            {"role": "user", "content": "list files"},
            calls[0].model_dump(exclude_none=True),
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": "Output:\nREADME.md",
            },
        ],
    )
    assert "README.md" in second.output_text


@pytest.mark.parametrize("model", MODELS)
def test_a_stored_response_is_continued_retrieved_listed_and_deleted(
    gateway: GatewayServer, tenants: dict[str, TenantKey], model: str
) -> None:
    alice, bob = tenants["alice"], tenants["bob"]
    client = sdk(gateway, alice)
    first = client.responses.create(model=model, input="Remember: blue")
    retrieved = client.responses.retrieve(first.id)
    assert retrieved.id == first.id and retrieved.output_text == first.output_text
    items = client.responses.input_items.list(first.id)
    assert items.data and items.data[0].type == "message"
    for path, schema in ((first.id, "Response"), (first.id + "/input_items", "ResponseItemList")):
        raw = httpx.get(f"{gateway.base_url}/v1/responses/{path}", headers=alice.headers)
        validate(schema, raw.json())
    with pytest.raises(openai.NotFoundError):  # another tenant's id does not exist for bob
        sdk(gateway, bob).responses.retrieve(first.id)
    second = client.responses.create(
        model="resp-echo", input="And now?", previous_response_id=first.id
    )
    assert first.id < second.id  # time-ordered: a stored response's key lands at the index's end
    echoed = json.loads(second.output_text)["body"]["messages"]
    contents = json.dumps(echoed)
    assert "Remember: blue" in contents and first.output_text in contents and "And now?" in contents
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_store_false_keeps_nothing_and_an_unknown_previous_id_is_a_400(
    gateway: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    client = sdk(gateway, tenants["alice"])
    response = client.responses.create(model="resp-chat", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="resp-chat", input="hi", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_hosted_tools_are_left_out_and_named(
    gateway: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    answer = httpx.post(
        gateway.base_url + "/v1/responses",
        json={"model": "resp-echo", "input": "hi", "tools": [{"type": "web_search"}]},
        headers=tenants["alice"].headers,
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["x-tollgate-dropped-tools"] == "web_search"
    sent = json.loads(answer.json()["output"][0]["content"][0]["text"])["body"]
    assert "tools" not in sent
    refused = httpx.post(
        gateway.base_url + "/v1/responses",
        json={
            "model": "resp-echo",
            "input": "hi",
            "tools": [{"type": "web_search"}],
            "tool_choice": {"type": "web_search"},
        },
        headers=tenants["alice"].headers,
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tool_choice"


def test_a_failure_after_the_start_is_response_failed_and_billed(
    gateway: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/responses",
        json={"model": "resp-cut", "input": "hi", "stream": True},
        headers=tenants["alice"].headers,
        timeout=30,
    ) as answer:
        lines = answer.read().decode().splitlines()
        request_id = answer.headers["x-request-id"]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    for event in events:
        validate("ResponseStreamEvent", event)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    row = wait_for_rows(1, request_id=request_id)[0]
    assert (row.status_code, row.completion_tokens, row.usage_estimated) == (502, 2, True)


def test_structured_output_reaches_the_chat_model_as_its_response_format(
    gateway: GatewayServer, tenants: dict[str, TenantKey]
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    response = sdk(gateway, tenants["alice"]).responses.create(
        model="resp-echo",
        input="Where is the Eiffel tower?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        reasoning={"effort": "low"},
        max_output_tokens=50,
    )
    sent = json.loads(response.output_text)["body"]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema, "strict": True},
    }
    assert (sent["reasoning_effort"], sent["max_completion_tokens"]) == ("low", 50)
