"""Calls run straight through the pipeline, without an HTTP server: for tests that hold many
calls at once and look at each one's answer."""

from __future__ import annotations

from django.http import HttpResponseBase
from django.test import RequestFactory

from gateway.api.errors import error_response
from gateway.calls import chat
from gateway.calls.pipeline import Call
from gateway.runtime import Runtime
from gateway.tenants.auth import Caller
from gateway.usage.endpoints import Endpoint


class ChatCalls:
    """``POST /v1/chat/completions`` calls of an authenticated caller, on ``runtime``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def chat(self, caller: Caller, body: bytes) -> HttpResponseBase:
        request = RequestFactory().post(
            "/v1/chat/completions", body, content_type="application/json"
        )
        call = Call(self.runtime, caller, Endpoint.CHAT_COMPLETIONS, error_response)
        return await call.run(lambda: chat.completions(call, request))
