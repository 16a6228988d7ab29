"""The lean handler's shortcuts answer as Django would: its kept URL resolutions
(``ApiHandler.resolve_request``), through the real ASGI app."""

from __future__ import annotations

from typing import Any

from support.inprocess import answer_everything, api_client, assert_error_shape

from conftest import TenantKey
from gateway.api.handler import api_application


async def test_a_path_with_parameters_is_resolved_each_time_with_its_own(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    gateway_runtime(answer_everything)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    async with api_client() as client:
        first = await client.get("/v1/models/echo", headers=headers)
        second = await client.get("/v1/models/no-such-model", headers=headers)
        again = await client.get("/v1/models/echo", headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"] == "echo"
    assert second.status_code == 404
    assert "no-such-model" in second.json()["error"]["message"]
    assert not any(path.startswith("/v1/models/") for path in api_application._static_routes)


async def test_a_kept_path_still_answers_each_method_and_unknown_paths_stay_404(
    tenants: dict[str, TenantKey], gateway_runtime: Any
) -> None:
    gateway_runtime(answer_everything)
    headers = {"authorization": f"Bearer {tenants['alice'].raw}"}
    async with api_client() as client:
        listed = await client.get("/v1/models", headers=headers)
        assert "/v1/models" in api_application._static_routes
        posted = await client.post("/v1/models", headers=headers, json={})
        listed_again = await client.get("/v1/models", headers=headers)
        unknown = [await client.get("/v1/nowhere", headers=headers) for _ in range(2)]
    assert listed.status_code == listed_again.status_code == 200
    assert listed.json() == listed_again.json()
    assert posted.status_code == 405
    assert_error_shape("/v1/models", posted)
    assert [r.status_code for r in unknown] == [404, 404]
    assert "/v1/nowhere" not in api_application._static_routes
