"""Ids carried from one dialect to the other."""

from __future__ import annotations

from typing import Any

from providers.ids import random_hex


def translated_id(source: Any, prefix: str, new_prefix: str) -> str:
    """``source``, an id of the other dialect, with ``new_prefix`` for ``prefix`` (``msg_abc`` ->
    ``chatcmpl-abc``), so that both sides log the same id; a new random one when there is none."""
    suffix = source.removeprefix(prefix) if isinstance(source, str) else ""
    return new_prefix + (suffix or random_hex())


def new_id(prefix: str) -> str:
    return prefix + random_hex()
