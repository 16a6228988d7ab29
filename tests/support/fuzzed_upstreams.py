"""What the upstream fuzzers share (tests/test_fuzz_upstream.py, tests/test_fuzz_timeouts.py):
the models they call (``EXTRA_CONFIG``: a native Responses upstream, calls that fall back or
retry from one dialect's upstream to the other's), the calls (``chat``, ``messages``,
``count_tokens``, ``responses``), the fake upstreams that answer them (``FakeUpstream``), and
what each example starts from (``start_over``, ``limited``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from conftest import TenantKey
from gateway.models import StoredResponse, UsageRecord
from gateway.tenants import auth
from support.asgi_replies import Tracebacks
from support.inprocess import ANTHROPIC_PATH
from support.upstream_answers import SECOND_HOST, SECOND_PROVIDERS, Answer

NATIVE_PROVIDER = """
[providers.native]
type = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
responses = true

[models."native-model"]
provider = "native"
upstream_model = "gpt-native"
input_per_mtok = 1.0
output_per_mtok = 2.0
"""
"""A model on an upstream (``mock_config``'s ``upstream.test``) that serves the Responses API
itself: its responses are kept there, and asked of it by id."""

EXTRA_CONFIG = (
    SECOND_PROVIDERS
    + NATIVE_PROVIDER
    + """
[models."gpt-then-claude"]
provider = "fake"
upstream_model = "gpt-first"
fallbacks = ["claude-second"]
input_per_mtok = 1.0

[models."claude-then-gpt"]
provider = "fake-anthropic"
upstream_model = "claude-first"
fallbacks = ["gpt-second"]
input_per_mtok = 1.0

[models."native-then-claude"]
provider = "native"
upstream_model = "gpt-native"
fallbacks = ["claude-second"]
input_per_mtok = 1.0

[models."claude-second"]
provider = "second-anthropic"
upstream_model = "claude-second"
output_per_mtok = 2.0

[models."gpt-second"]
provider = "second-openai"
upstream_model = "gpt-second"
output_per_mtok = 2.0

[models."gpt-timed"]
provider = "fake"
upstream_model = "gpt-first"
fallbacks = ["claude-second"]
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.05

[models."claude-timed"]
provider = "fake-anthropic"
upstream_model = "claude-first"
fallbacks = ["gpt-second"]
first_byte_timeout_seconds = 0.02
total_timeout_seconds = 0.05

[models."gpt-or-claude"]
deployments = [
  { provider = "fake", upstream_model = "gpt-first" },
  { provider = "second-anthropic", upstream_model = "claude-second", priority = 1 },
]
input_per_mtok = 1.0

[models."claude-or-gpt"]
deployments = [
  { provider = "fake-anthropic", upstream_model = "claude-first" },
  { provider = "second-openai", upstream_model = "gpt-second", priority = 1 },
]
input_per_mtok = 1.0

[router]
backoff_base_seconds = 0.0
"""
)
"""``NATIVE_PROVIDER``; models of one dialect whose calls fall back to a model of the other on
another upstream (``second.test``), or retry on a deployment of the other there
(``gpt-or-claude``, ``claude-or-gpt``), the first with short timeouts of its own (``-timed``:
its upstream may hang); retries without backoff."""
FIRST_HOST = "upstream.test"

# --- the calls ------------------------------------------------------------------------------------

Request = tuple[str, dict[str, Any]]
"""The path and the body (or multipart form) of a call."""
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
ANTHROPIC_TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]
COUNT_PATH = ANTHROPIC_PATH + "/count_tokens"


def chat(model: str, stream: bool) -> Request:
    body = {"model": model, "messages": HI, "tools": TOOLS, "stream": stream}
    return "/v1/chat/completions", {"json": body}


def messages(model: str, stream: bool) -> Request:
    body = {"model": model, "max_tokens": 100, "messages": HI, "tools": ANTHROPIC_TOOLS}
    return ANTHROPIC_PATH, {"json": {**body, "stream": stream}}


def count_tokens(model: str) -> Request:
    return COUNT_PATH, {"json": {"model": model, "messages": HI, "tools": ANTHROPIC_TOOLS}}


def responses(model: str, stream: bool, store: bool) -> Request:
    body = {"model": model, "input": "hi", "tools": [{"type": "function", "name": "f"}]}
    return "/v1/responses", {"json": {**body, "stream": stream, "store": store}}


# --- the upstreams --------------------------------------------------------------------------------


@dataclass
class FakeUpstream:
    """The answers of the upstream (``FIRST_HOST``) and of the one a call falls back to
    (``SECOND_HOST``), each the same to every request of the example (retries get the same);
    the requests, in order."""

    answer: Answer = field(default_factory=lambda: Answer(200, b"{}"))
    fallback: Answer | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == FIRST_HOST:
            return await self.answer.arrival()
        assert request.url.host == SECOND_HOST and self.fallback is not None, request.url
        return await self.fallback.arrival()

    def start(self, answer: Answer, fallback: Answer | None) -> None:
        self.answer, self.fallback = answer, fallback
        self.requests.clear()

    @property
    def all_failed(self) -> bool:
        """Whether every upstream of the call says no (an error status, or no answer): then
        the call fails too."""
        return self.answer.fails and (self.fallback is None or self.fallback.fails)


def start_over(tracebacks: Tracebacks) -> None:
    """Before an example: no ledger row, no stored response, nothing logged."""
    UsageRecord.objects.all().delete()
    StoredResponse.objects.all().delete()
    tracebacks.records.clear()


def quiet_request_log() -> None:
    """No line per 4xx and 5xx from Django (thousands, in a fuzz run)."""
    logging.getLogger("django.request").setLevel(logging.CRITICAL)


def limited(who: TenantKey) -> None:
    """Give ``who``'s tenant limits it never reaches: each call is then admitted (and a call
    that falls back admitted again, on its fallback's prices) and settled."""
    who.tenant.rpm_limit, who.tenant.tpm_limit = 10**6, 10**9
    who.tenant.budget_usd = Decimal(10**6)
    who.tenant.save()
    auth._key_cache.clear()
