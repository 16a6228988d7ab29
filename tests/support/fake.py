"""The client of the fake upstream's control API: script, reset and read the stats of one
instance (one ``tests/fake_upstream.py`` process) by its base URL, e.g. ``"http://127.0.0.1:4321"``.

The fields, what they do and what the stats hold: the "Scripts" part of tests/fake_upstream.py's
docstring.
"""

from __future__ import annotations

from typing import Any

import httpx

TIMEOUT = 5.0


def _call(method: str, base_url: str, action: str, body: Any = None) -> dict[str, Any]:
    response = httpx.request(method, f"{base_url}/_fake/{action}", json=body, timeout=TIMEOUT)
    if response.status_code != 200:
        raise ValueError(f"fake upstream {action}: {response.status_code} {response.text}")
    answer: dict[str, Any] = response.json()
    return answer


def script(base_url: str, **fields: Any) -> dict[str, Any]:
    """Replace the instance's script with ``fields`` (none: an empty script, which still records
    the stats); return the script as the instance now has it, every field included. A field that
    the fake does not know, or a bad value: ValueError, and the script stays as it was."""
    script: dict[str, Any] = _call("POST", base_url, "script", fields)["script"]
    return script


def reset(base_url: str) -> None:
    """Back to the script the instance started with, with no stats and an empty prompt cache."""
    _call("POST", base_url, "reset")


def stats(base_url: str) -> dict[str, Any]:
    """``{"requests": [{"path", "model", "stream", "at", "status", "prompt_cache_key", "user"},
    ...], "count": N, "recording": True}``: the ``/v1`` requests since the last reset. Raises
    RuntimeError when the instance is not recording (no script yet: ``reset`` it first)."""
    answer = _call("GET", base_url, "stats")
    if not answer["recording"]:
        raise RuntimeError(
            f"the fake upstream at {base_url} records no stats before a script: reset() it first"
        )
    return answer
