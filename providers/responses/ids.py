"""Ids of the Responses API's objects: ``resp_``, ``msg_``, ``fc_``, ``ctc_`` and ``rs_`` followed
by 48 random hex digits, the length OpenAI's own ids have."""

from __future__ import annotations

import secrets

RESPONSE, MESSAGE, FUNCTION_CALL, CUSTOM_TOOL_CALL, REASONING = (
    "resp_",
    "msg_",
    "fc_",
    "ctc_",
    "rs_",
)


def new_item_id(prefix: str) -> str:
    """A new id for a response (``RESPONSE``) or one of its output items."""
    return prefix + secrets.token_hex(24)
