"""The admin's "Upstream health" page (``/admin/routing/health/``): each deployment of each
model and each upstream key of the admin, healthy or cooling down until when, with its recent
failures, read from the router's own state (``gateway.routing.health``) in the process that
answers; with REDIS_URL that state is every process's (``gateway.routing.shared``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from gateway.models import ProviderKey
from gateway.routing.router import key_target
from gateway.runtime import get_runtime
from gateway.upstream_keys import secrets

PERMISSION = "gateway.view_providerkey"


def _when(seconds: object) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if isinstance(seconds, float) else None


def _row(name: str, detail: str, state: dict[str, Any] | None) -> dict[str, Any]:
    state = state or {}
    return {
        "name": name,
        "detail": detail,
        "state": state.get("state", "healthy"),
        "cooled_until": _when(state.get("cooled_until")),
        "recent_failures": state.get("recent_failures", 0),
        "last_failure": _when(state.get("last_failure")),
        "last_error": state.get("last_error", ""),
    }


def router_states() -> dict[str, dict[str, Any]]:
    """The router's state of every target that ever failed, by target."""
    return {str(entry["target"]): entry for entry in get_runtime().router.health.snapshot()}


def key_row(key: ProviderKey, states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An upstream key of the admin as the router sees it (never failed: healthy), and when it
    last got an answer (``last_success``, this process's calls); its target is found by
    decrypting the key (one that cannot be decrypted is shown as never failed and never used:
    the router cannot use it either)."""
    target, answered = "", None
    if secrets.is_configured():
        try:
            raw = secrets.decrypt(key.secret_encrypted, key.label)
        except secrets.SecretKeyWrong:
            pass
        else:
            target = key_target(key.provider, raw)
            answered = get_runtime().router.key_answered_at.get(raw)
    row = _row(f"{key.provider}: {key.label}", f"…{key.last4}", states.get(target))
    row["last_success"] = _when(answered)
    if not key.is_active:
        row["state"] = "inactive"
    return row


def health_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The deployments of config.toml's models, and the admin's upstream keys, with their
    state; every target that never failed is healthy."""
    current = get_runtime()
    states = router_states()
    deployments = []
    for alias in current.config.models:
        for route in current.factory.routes(alias):
            detail = f"{alias} · weight {route.weight:g} · priority {route.priority}"
            deployments.append(_row(route.deployment, detail, states.get(route.deployment)))
    keys = [key_row(key, states) for key in ProviderKey.objects.order_by("provider", "label")]
    return deployments, keys


def _health(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    deployments, keys = health_rows()
    context = {
        **admin.site.each_context(request),
        "title": "Upstream health",
        "deployments": deployments,
        "keys": keys,
        "now": datetime.now(UTC),
    }
    return render(request, "admin/routing/health.html", context)


health = admin.site.admin_view(_health)
