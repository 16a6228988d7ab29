"""Upstream credentials never travel back to a tenant.

An upstream may quote the request it refuses, headers included, in its error message; the
gateway passes 4xx messages on (they explain what is wrong with the caller's request), so every
upstream text that reaches a tenant goes through ``redact`` first (``error_for_upstream_status``
is the one place where upstream failures become errors). It removes:

- every upstream key the gateway has sent or holds: config.toml's ``api_key_env`` values and the
  admin's ``ProviderKey`` secrets, remembered by ``remember_secret`` as providers use them;
- anything shaped like a credential: ``Bearer <token>``, ``sk-...`` and ``sk-ant-...`` keys, and
  the value of an ``x-api-key``, ``api_key`` or ``authorization`` field.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6
"""Shorter strings are not redacted literally (they would mangle ordinary words); the shapes
below still catch them as header values."""

_SHAPES = re.compile(
    r"(?P<named>(?:x-api-key|api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?)"
    r"(?:bearer\s+)?[^\s\"',;}]+"
    r"|(?P<scheme>bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|\bsk-[A-Za-z0-9_-]{6,}",
    re.IGNORECASE,
)

_known_secrets_registry: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def remember_secret(secret: str | None) -> None:
    """Add an upstream key to those ``redact`` removes (cheap when it is known already: it runs
    for every upstream call)."""
    global _known_pattern
    if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in _known_secrets_registry:
        _known_secrets_registry.add(secret)
        longest_first = sorted(_known_secrets_registry, key=len, reverse=True)
        _known_pattern = re.compile("|".join(map(re.escape, longest_first)))


def redact(text: str) -> str:
    """``text`` without any known upstream key or anything shaped like a credential."""
    if _known_pattern is not None:
        text = _known_pattern.sub(REDACTED, text)
    return _SHAPES.sub(_replacement, text)


def _replacement(match: re.Match[str]) -> str:
    prefix = match.group("named") or match.group("scheme") or ""
    return prefix + REDACTED
