"""What the translation asks of a request's values, and the ``InvalidRequest`` it raises
otherwise: a Responses request comes straight from a client, so every value is checked before it
is used, and the error names the offending value in dotted form (``input[2].content[0]``)."""

from __future__ import annotations

from typing import Any

from providers.errors import InvalidRequest


def invalid(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def text_of(value: Any, param: str) -> str:
    """``value``, which must be a string."""
    if not isinstance(value, str):
        raise invalid(f"'{param}' must be a string.", param)
    return value


def name_of(value: Any, param: str) -> str:
    """``value``, which must be a non-empty string."""
    if not isinstance(value, str) or not value:
        raise invalid(f"'{param}' must be a non-empty string.", param)
    return value


def optional_text(value: Any, param: str) -> str | None:
    return None if value is None else text_of(value, param)


def object_of(value: Any, param: str) -> dict[str, Any]:
    """``value``, which must be a JSON object."""
    if not isinstance(value, dict):
        raise invalid(f"'{param}' must be an object.", param)
    return value


def optional_object(value: Any, param: str) -> dict[str, Any] | None:
    return None if value is None else object_of(value, param)


def list_of(value: Any, param: str) -> list[Any]:
    """``value``, which must be a JSON array."""
    if not isinstance(value, list):
        raise invalid(f"'{param}' must be an array.", param)
    return value


def optional_bool(value: Any, param: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise invalid(f"'{param}' must be a boolean.", param)
    return value


def optional_number(value: Any, param: str, highest: float) -> float | None:
    """``value``, which must be a number from 0 to ``highest``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= highest:
        raise invalid(f"'{param}' must be a number between 0 and {highest:g}.", param)
    return value


def optional_count(value: Any, param: str) -> int | None:
    """``value``, which must be a positive integer, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise invalid(f"'{param}' must be a positive integer.", param)
    return value


def kind_of(value: Any, param: str) -> str:
    """The ``type`` of an object in a list (an item, a content part, a tool)."""
    return name_of(object_of(value, param).get("type"), f"{param}.type")
