"""JSON read the way a JavaScript program writes it: a string holding half of a surrogate pair.

``JSON.stringify`` writes a lone surrogate as an escape (``"\\ud83d"``), and a JavaScript string
cut by its length can end between the two halves of an emoji: Claude Code cuts a long tool result
so, and every later call of the session carries it. orjson refuses such a string, as Anthropic's
API does ("no low surrogate in string", a 400 on every call until the session is abandoned). A
body orjson refuses is read once more with each lone half, and each byte that is not UTF-8, as
U+FFFD, the replacement character (what a decoder puts for what it cannot read). A body it takes
costs nothing more, and a body still bad after mending is refused as orjson refused it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_SURROGATE = re.compile(
    rb"(?<!\\)((?:\\\\)*)"  # an escape, not an escaped backslash followed by "u..."
    rb"(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
)
_PAIR = 12
"""The length of a high half's escape followed by a low half's: a whole character, kept."""


def loads(raw: bytes) -> Any:
    """``orjson.loads``, which reads a lone surrogate or a byte that is not UTF-8 as U+FFFD."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        mended = mend(raw)
        if mended is None:
            raise
        return orjson.loads(mended)


def mend(raw: bytes) -> bytes | None:
    """``raw`` with its lone surrogates and bytes that are not UTF-8 replaced, or None if it
    holds none."""
    mended = _SURROGATE.sub(_replace_lone, raw.decode("utf-8", "replace").encode())
    return None if mended == raw else mended


def _replace_lone(match: re.Match[bytes]) -> bytes:
    backslashes, escape = match.groups()
    return match.group() if len(escape) == _PAIR else backslashes + rb"\ufffd"
