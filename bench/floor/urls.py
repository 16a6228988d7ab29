"""One async django-ninja view answering a fixed, pre-encoded chat completion."""

from __future__ import annotations

import orjson
from django.http import HttpRequest, HttpResponse
from django.urls import path
from ninja import NinjaAPI

from bench.bare.urls import COMPLETION

api = NinjaAPI(title="floor", urls_namespace="floor", docs_url=None)

BODY = orjson.dumps(COMPLETION)


@api.post("/chat/completions")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return HttpResponse(BODY, content_type="application/json")


urlpatterns = [path("v1/", api.urls)]
