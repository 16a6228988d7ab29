"""A minimal Server-Sent Events reader over a byte stream.

Upstreams send ``data: <json>`` lines (OpenAI) or ``event: <name>`` + ``data: <json>`` pairs
(Anthropic), separated by blank lines. This yields ``(event, data)`` per event, with ``data`` as
bytes so that JSON can be forwarded without decoding it to ``str`` first.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[str | None, bytes]]:
    buffer = b""
    event: str | None = None
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if data:
                    yield event, b"\n".join(data)
                event, data = None, []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode(errors="replace")  # an upstream's, maybe not UTF-8
            # comments (":") and other fields (id, retry) carry nothing we use
    if data:
        yield event, b"\n".join(data)
