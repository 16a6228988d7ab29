"""End to end: listing and retrieving models (/v1/models) through the ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest
from support.chat_e2e import sdk_fixture  # noqa: F401 - a fixture: sdk
from support.e2e import check_error, validate

from conftest import GatewayServer, TenantKey

pytestmark = pytest.mark.e2e


def test_models_list_and_retrieve(
    gateway_server: GatewayServer,
    tenants: dict[str, TenantKey],
    sdk: Callable[..., openai.OpenAI],
) -> None:
    client = sdk(tenants["alice"])
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    models = {model.id: model for model in raw.parse()}
    assert {"gpt-test", "echo", "slow", "fail-500", "drop-mid-stream", "garbage"} <= set(models)
    assert models["gpt-test"].owned_by == "fake"
    assert models["gpt-test"].object == "model"

    retrieved = client.models.with_raw_response.retrieve("gpt-test")
    validate("Model", retrieved.http_response.json())
    model = retrieved.parse()
    assert (model.id, model.object, model.owned_by) == ("gpt-test", "model", "fake")

    passthrough = client.models.retrieve("fake/any-upstream-model")  # passthrough_models = true
    assert (passthrough.id, passthrough.owned_by) == ("fake/any-upstream-model", "fake")

    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    check_error(caught.value.response, 404, code="model_not_found", param="model")

    with pytest.raises(openai.AuthenticationError) as denied:
        sdk("tg-" + "x" * 43).models.list()
    check_error(denied.value.response, 401, code="invalid_api_key")
    for path in ("/v1/models", "/v1/models/gpt-test", "/v1/models/no-such-model"):
        check_error(
            httpx.get(gateway_server.base_url + path, timeout=10),
            401,
            type="invalid_request_error",
            code="invalid_api_key",
        )
