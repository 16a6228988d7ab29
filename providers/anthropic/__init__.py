"""Anthropic, both ways.

- ``provider.py``: ``AnthropicProvider``, the Messages API over HTTP (registered as the provider
  type ``anthropic``), for OpenAI-shaped calls and for the native ``/v1/messages`` pass-through.
- ``translate.py``: an OpenAI chat request to a Messages request, a message back to a
  ``chat.completion``.
- ``stream.py``: the event streams, both ways, and what they share with the JSON answers (stop
  reasons, usage, errors).
- ``endpoint.py``: Anthropic-speaking clients routed to any model (the gateway's
  ``POST /v1/messages``): a Messages request to an OpenAI request, the answer back.
- ``ids.py``: ids carried from one dialect to the other.
"""

from providers.anthropic.provider import AnthropicProvider
from providers.types import NativeEvent

__all__ = ["AnthropicProvider", "NativeEvent"]
