"""JSON read the way a JavaScript program writes it: a string holding half of a surrogate pair.

``JSON.stringify`` writes a lone surrogate as an escape (``"\\ud83d"``), and a JavaScript string
cut by its length can end between the two halves of an emoji: Claude Code cuts a long tool result
so, and every later call of the session carries it. orjson refuses such a string, as Anthropic's
API does ("no low surrogate in string", a 400 on every call until the session is abandoned). A
body orjson refuses for it is read once more with each lone half's escape replaced by U+FFFD's,
the replacement character (what a decoder puts for what it cannot read). A body orjson takes
costs nothing more; a body still bad after mending is refused as orjson refused it, and so is a
body that is not UTF-8 (no JavaScript program writes one).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""The escape of half a surrogate pair (found by its literal ``\\u``: a fast scan of any body)."""
_ESCAPE = 6
"""The length of one ``\\uXXXX``."""
_REPLACEMENT = rb"\ufffd"
_BACKSLASH = ord("\\")
MOST_ESCAPES = 10_000
"""The most escapes of surrogate halves a body is mended with (each is looked at in Python, about
a microsecond): a cut emoji is one or two; a body of millions would hold the event loop for
seconds, and is refused as orjson refused it."""


def loads(raw: bytes | str) -> Any:
    """``orjson.loads``, which reads the escape of a lone surrogate as U+FFFD: a body, an
    upstream's answer or event, or JSON inside them (a tool call's ``arguments``)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        # orjson's words for it: "no low surrogate", "invalid high surrogate" or "invalid low
        # surrogate" "in string".
        if "surrogate in string" not in str(error):
            raise
        # A str (a tool call's arguments) is mended as its UTF-8; a real surrogate in it would
        # have been refused as not UTF-8, and is kept for orjson to refuse again.
        mended = mend(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
        if mended is None:
            raise
        return orjson.loads(mended)


def mend(raw: bytes) -> bytes | None:
    """``raw`` with its lone surrogates' escapes replaced by U+FFFD's, or None if it holds none
    (or more than ``MOST_ESCAPES`` escapes of halves). A high half's escape followed at once by a
    low half's is a whole character, kept; an escape after an odd run of backslashes is text (an
    escaped backslash, then "u..."), kept."""
    pieces: list[bytes] = []
    done = 0  # the end of what ``pieces`` holds
    pair_end = -1  # the end of the low half of a pair just kept
    for seen, match in enumerate(_SURROGATE.finditer(raw)):
        if seen == MOST_ESCAPES:
            return None
        start = match.start()
        if start < pair_end or not _is_escape(raw, start):
            continue
        if _is_high(raw, start) and _is_low_escape_at(raw, start + _ESCAPE):
            pair_end = start + 2 * _ESCAPE
            continue
        pieces += (raw[done:start], _REPLACEMENT)
        done = start + _ESCAPE
    if not pieces:
        return None
    pieces.append(raw[done:])
    return b"".join(pieces)


def _is_escape(raw: bytes, start: int) -> bool:
    """Whether the backslash at ``start`` begins an escape: an even run of them before it."""
    run = 0
    while start - run > 0 and raw[start - run - 1] == _BACKSLASH:
        run += 1
    return run % 2 == 0


def _is_high(raw: bytes, start: int) -> bool:
    return raw[start + 3] in b"89abAB"


def _is_low_escape_at(raw: bytes, start: int) -> bool:
    return _SURROGATE.match(raw, start) is not None and not _is_high(raw, start)
