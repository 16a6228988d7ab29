"""One async django-ninja view returning a fixed chat completion: what a Django + ninja
service costs when it does no work at all."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import path
from ninja import NinjaAPI

api = NinjaAPI(title="bare", urls_namespace="bare", docs_url=None)

CONTENT = "".join(f"tok{i} " for i in range(20))
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-bare",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": CONTENT, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 11,
        "completion_tokens": 20,
        "total_tokens": 31,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2},
    },
}


@api.post("/chat/completions")
async def chat_completions(request: HttpRequest) -> dict[str, Any]:
    return COMPLETION


urlpatterns = [path("v1/", api.urls)]
