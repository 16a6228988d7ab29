"""How deep a JSON request body may nest and how many items its arrays and objects may hold,
checked on the raw bytes before the body is parsed.

Why before: ``orjson.loads`` and pydantic hold the GIL for the whole call, so a 30 MB body of a
million tiny messages would stall the event loop (every other caller) for seconds however it is
parsed, and leave the process hundreds of MB larger. Refusing it needs far less:

1. Upper bounds at C speed (``bytes.count``): a body with at most ``max_depth`` opening brackets
   cannot nest deeper, one with fewer than ``max_items`` commas has no array that long. Small
   bodies (every typical call) stop here.
2. Bodies up to ``INLINE_BYTES`` that pass neither bound are reduced to their skeleton (brackets
   and commas outside strings, by ``bytes.translate`` and two regexes), whose depth and longest
   run of commas are exact, still at C speed (~0.3 ms for 64 KB of chat history).
3. What the skeleton refuses, and every larger body over the bounds, is scanned by a tokenizer
   that names the top-level field at fault and stops at the first excess. On large bodies it runs
   in a worker thread: the GIL switches between its matches, so the event loop keeps serving.

The skeleton only filters: the tokenizer decides, so a string holding brackets is never refused.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from django.conf import settings

from providers.errors import InvalidRequest

INLINE_BYTES = 256 * 1024
"""Bodies up to this size are checked on the event loop (a few ms at most); larger ones that
pass neither upper bound are scanned in a worker thread."""

_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_COMMA, _QUOTE, _BRACE = ord(","), ord('"'), ord("{")
_STRUCTURE = re.compile(rb'["\[\]{},]')
"""Where a string starts, a bracket or a comma: all the structure there is."""
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*')
"""The inside of a JSON string, escapes included, up to its closing quote."""
SLICE = 1024 * 1024
"""Bytes one regex call may cover: between two, the GIL can pass to the event loop, however
long a string (or a run of spaces) is."""
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{},')
_STRINGS = re.compile(rb'"[^"]*"')
_LEAVES = re.compile(rb"\[,*\]|\{,*\}")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_depth: int
    max_items: int
    max_values: int = 50_000
    """Values in the whole body (containers and commas outside strings): what bounds the time
    ``orjson.loads`` and validation hold the event loop, whatever the shape."""

    @classmethod
    def from_settings(cls) -> BodyLimits:
        return cls(
            int(settings.TOLLGATE_MAX_JSON_DEPTH),
            int(settings.TOLLGATE_MAX_ITEMS),
            int(settings.TOLLGATE_MAX_JSON_VALUES),
        )


def within_upper_bounds(body: bytes | _Sliced, limits: BodyLimits) -> bool:
    """True when no array can be too long, no nesting too deep and the whole not too big, by
    counting bytes."""
    commas, opens = body.count(b","), body.count(b"[") + body.count(b"{")
    return (
        commas < limits.max_items
        and opens <= limits.max_depth
        and commas + opens <= limits.max_values
    )


def skeleton_within(body: bytes, limits: BodyLimits) -> bool:
    """The exact answer for well-formed JSON, at C speed: strip the body to the brackets and
    commas outside its strings, then peel the innermost containers off, one level a pass. A run
    of ``max_items`` commas is one container with more than ``max_items`` items."""
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = _STRINGS.sub(b"", body.translate(None, _NOT_STRUCTURE))
    if len(skeleton) - skeleton.count(b"]") - skeleton.count(b"}") > limits.max_values:
        return False
    too_many = b"," * limits.max_items
    for _ in range(limits.max_depth):
        if too_many in skeleton:
            return False
        if not skeleton:
            return True
        skeleton = _LEAVES.sub(b"", skeleton)
    return not skeleton


@dataclass(frozen=True, slots=True)
class ShapeViolation:
    message: str
    param: str | None


def find_violation(body: bytes, limits: BodyLimits) -> ShapeViolation | None:
    """The first place where ``body`` nests deeper than ``max_depth`` or a container holds more
    than ``max_items`` items, named by its top-level field; None if there is none."""
    commas: list[int] = []  # per open container: the commas seen so far in it
    field: str | None = None  # the top-level field being read
    top_is_object = expect_field = False
    values = 0  # commas and opening brackets so far
    for kind, token in _tokens(body):
        if kind == _COMMA or kind in _OPEN:
            values += 1
            if values > limits.max_values:
                return _too_many_values(field, limits)
        if kind == _QUOTE:
            if expect_field and len(commas) == 1:
                field, expect_field = _field_name(token), False
        elif kind == _COMMA:
            if commas:
                commas[-1] += 1
                if commas[-1] >= limits.max_items:
                    return _too_many_items(field, limits)
                expect_field = top_is_object and len(commas) == 1
        elif kind in _OPEN:
            if len(commas) >= limits.max_depth:
                return _too_deep(field, limits)
            if not commas:
                top_is_object = expect_field = kind == _BRACE
            commas.append(0)
        elif kind in _CLOSE and commas:
            commas.pop()
    return None


def _tokens(body: bytes) -> Iterator[tuple[int, bytes]]:
    """The structure of ``body``: each bracket and comma outside strings, and each string (its
    bytes when short enough to be a field's name, else empty), a slice at a time."""
    pos, size = 0, len(body)
    while pos < size:
        match = _STRUCTURE.search(body, pos, min(pos + SLICE, size))
        if match is None:
            pos += SLICE
            continue
        start = match.start()
        if body[start] != _QUOTE:
            yield body[start], b""
            pos = start + 1
            continue
        pos = _string_end(body, start + 1)
        yield _QUOTE, body[start:pos] if pos - start <= 256 else b""


def _string_end(body: bytes, pos: int) -> int:
    """Just past the quote that closes the string whose inside starts at ``pos``."""
    size = len(body)
    while pos < size:
        match = _STRING_BODY.match(body, pos, min(pos + SLICE, size))
        end = match.end() if match else pos
        if end < size and body[end] == _QUOTE:
            return end + 1
        if end == pos:  # a backslash with nothing after it: the body ends inside the string
            return size
        pos = end
    return size


def _field_name(token: bytes) -> str | None:
    try:
        name = orjson.loads(token)
    except orjson.JSONDecodeError:  # a lone surrogate, say: the name goes unsaid
        return None
    return name if isinstance(name, str) else None


def _too_deep(field: str | None, limits: BodyLimits) -> ShapeViolation:
    where = f" in '{field}'" if field else ""
    return _violation(
        f"nests JSON deeper than {limits.max_depth} levels{where}",
        "TOLLGATE_MAX_JSON_DEPTH",
        field,
    )


def _too_many_values(field: str | None, limits: BodyLimits) -> ShapeViolation:
    where = f" ('{field}' among them)" if field else ""
    return _violation(
        f"holds more than {limits.max_values} JSON values{where}", "TOLLGATE_MAX_JSON_VALUES", field
    )


def _too_many_items(field: str | None, limits: BodyLimits) -> ShapeViolation:
    what = f"a JSON array or object of more than {limits.max_items} items"
    return _violation(f"holds {what}", "TOLLGATE_MAX_ITEMS", field, subject=field)


def _violation(
    problem: str, setting: str, field: str | None, subject: str | None = None
) -> ShapeViolation:
    """``"<subject> <problem> (<setting>)."``, the subject being the request body or a field."""
    who = f"'{subject}'" if subject else "The request body"
    return ShapeViolation(f"{who} {problem} ({setting}).", field)


async def check_body_shape(body: bytes, limits: BodyLimits | None = None) -> None:
    """Raise a 400 naming the limit and the field when ``body`` nests too deep or holds too many
    items; never blocks the event loop for long (see the module's docstring)."""
    limits = limits or BodyLimits.from_settings()
    if len(body) <= INLINE_BYTES:
        if within_upper_bounds(body, limits) or skeleton_within(body, limits):
            return
        violation = find_violation(body, limits)
    else:
        violation = await asyncio.to_thread(_large_body_violation, body, limits)
    if violation is not None:
        raise InvalidRequest(violation.message, param=violation.param, code="body_too_complex")


def _large_body_violation(body: bytes, limits: BodyLimits) -> ShapeViolation | None:
    """In a worker thread, in slices: one ``bytes.count`` over 32 MB holds the GIL for ~15 ms,
    one over 1 MiB for ~0.5 ms, and the GIL can pass to the event loop between two; the scan
    lets it go between matches."""
    return None if within_upper_bounds(_Sliced(body), limits) else find_violation(body, limits)


class _Sliced:
    """A body whose ``count`` goes a slice at a time (tokens are single bytes: none is cut)."""

    SLICE = 1024 * 1024

    def __init__(self, body: bytes) -> None:
        self.body = body

    def count(self, token: bytes) -> int:
        size, step = len(self.body), self.SLICE
        return sum(self.body.count(token, start, start + step) for start in range(0, size, step))
