"""Text the database would refuse, mended where it is stored: a NUL (PostgreSQL's text and JSON
take none) and a lone surrogate (no encoding takes one) become U+FFFD. The ledger's rows
(``gateway.usage.ledger_rows``) and the stored responses (``gateway.calls.responses``) are mended
alike, so a value reads the same in both."""

from __future__ import annotations

from typing import Any


def storable_text(value: str, limit: int | None = None) -> str:
    """``value`` with what no database column takes replaced, cut to ``limit`` characters."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates
        value = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    return value[:limit] if limit else value


def storable_json(value: Any) -> Any:
    """A JSON value (strings, lists, objects, the rest as they are) with every string in it,
    object keys included, mended by ``storable_text``."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [storable_json(item) for item in value]
    if isinstance(value, dict):
        return {storable_json(key): storable_json(item) for key, item in value.items()}
    return value
