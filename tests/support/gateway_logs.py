"""What the end-to-end gateways write: JSON lines only, and never a prompt, an answer or a key.

Every gateway ``conftest.start_gateway`` starts logs with ``TOLLGATE_LOG_FORMAT=json`` to a file
(``GatewayServer.log_path``); after each test module, ``check_gateway_log`` reads the file of
every gateway the module started.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

UPSTREAM_KEY = "sk-upstream-secret"
"""The upstream key every end-to-end gateway holds (``FAKE_UPSTREAM_KEY``)."""
FORBIDDEN = (
    "Say hello.",  # the prompt of most end-to-end calls (support.e2e.HELLO)
    "tok0 tok1",  # the fake upstream's answer text
    UPSTREAM_KEY,
)
TENANT_KEY = re.compile(r"tg-[A-Za-z0-9_-]{20,}")
"""A whole tenant key (``tg-`` and 43 characters); the logged prefix has 9 after ``tg-``."""


def check_gateway_log(path: Path) -> int:
    """Assert that every line of the log at ``path`` is a JSON object with a time, a level and a
    message, and that none holds a prompt, an answer, the upstream key or a tenant key; return
    how many lines were read. A last line cut short (a process killed mid-write) is scanned but
    not parsed."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        for marker in FORBIDDEN:
            assert marker not in line, f"{path}:{number} holds {marker!r}: {line}"
        assert not TENANT_KEY.search(line), f"{path}:{number} holds a tenant key: {line}"
        if number == len(lines):
            break  # after the last newline: empty, or cut short
        entry = json.loads(line)
        assert isinstance(entry, dict), f"{path}:{number} is not a JSON object: {line}"
        assert {"time", "level", "logger", "message"} <= set(entry), f"{path}:{number}: {line}"
    return len(lines) - 1
