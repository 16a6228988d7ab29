"""The admin's test of an upstream key: the cheapest call an upstream answers, listing its
models (``GET {base_url}/models``), sent with that key.

It runs in the admin, not on the request path, so a synchronous ``httpx.Client`` with a short
timeout is fine. The result keeps the upstream's error message (redacted of every upstream key
and of anything shaped like a credential) and is stored on the key (``test_passed_at``,
``test_failed_at``, ``test_error``) for the provider keys page.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import orjson
from django.utils import timezone

from gateway.models import ProviderKey
from gateway.runtime import get_runtime
from gateway.upstream_keys import secrets
from providers.http import upstream_error_detail
from providers.redaction import redact, remember_secret

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ERROR_LENGTH = ProviderKey._meta.get_field("test_error").max_length or 500


@dataclass(frozen=True, slots=True)
class ProbeResult:
    passed: bool
    summary: str
    """``3 models listed``; or what failed: ``HTTP 401: <the upstream's message>``."""


def probe(provider: str, secret: str, client: httpx.Client) -> ProbeResult:
    """List the models of ``provider`` (a name of config.toml) with ``secret``."""
    config = get_runtime().config.providers.get(provider)
    if config is None:
        return ProbeResult(False, f"'{provider}' is not a provider of config.toml.")
    headers = dict(config.headers)
    if config.type == "anthropic":  # as providers/anthropic sends its key, else as OpenAI's
        headers.update({"x-api-key": secret, "anthropic-version": config.anthropic_version})
    else:
        headers["authorization"] = f"Bearer {secret}"
    remember_secret(secret)  # an upstream that echoes the key back: redacted below
    url = config.base_url.rstrip("/") + "/models"
    try:
        response = client.get(url, headers=headers)
    except httpx.TimeoutException:
        return ProbeResult(False, f"{url} did not answer within {TIMEOUT.read:g} s.")
    except httpx.TransportError as error:
        return ProbeResult(False, f"{url} could not be reached ({type(error).__name__}).")
    if response.status_code >= 400:
        message, _, _ = upstream_error_detail(response.content)
        said = f"HTTP {response.status_code}" + (f": {message}" if message else ".")
        return ProbeResult(False, redact(said)[:ERROR_LENGTH])
    try:
        models = orjson.loads(response.content).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        models = None
    if not isinstance(models, list):
        return ProbeResult(False, f"HTTP {response.status_code}, but not a list of models.")
    return ProbeResult(True, f"{len(models)} models listed.")


def probe_key(key: ProviderKey, client: httpx.Client) -> ProbeResult:
    """Probe a stored key and keep the result on it (``secrets.SecretKeyWrong`` when
    TOLLGATE_SECRET_KEY does not decrypt it)."""
    result = probe(key.provider, secrets.decrypt(key.secret_encrypted, str(key)), client)
    now = timezone.now()
    if result.passed:
        key.test_passed_at = now
        ProviderKey.objects.filter(pk=key.pk).update(test_passed_at=now)
    else:
        key.test_failed_at, key.test_error = now, result.summary
        ProviderKey.objects.filter(pk=key.pk).update(test_failed_at=now, test_error=result.summary)
    return result
