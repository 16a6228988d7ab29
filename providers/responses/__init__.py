"""OpenAI's Responses API (``POST /v1/responses``) for models that speak only Chat Completions
("bridged" models): pure translations, without I/O, storage or Django.

- ``request.py``: ``to_chat``, a Responses request (and the items of the responses before it,
  for ``previous_response_id``) as a Chat Completions request.
- ``tools.py``: function, namespace and custom tools as chat functions, hosted tools left out;
  ``ToolNames`` maps the model's calls back to the tools the client declared.
- ``response.py``: ``from_chat``, a ``chat.completion`` as a ``Response``, and the output items
  and response object the stream shares.
- ``stream.py``: ``ChatToResponsesStream``, chat chunks in, Responses stream events out.
- ``checks.py``: the type checks on the request's values, and the ``InvalidRequest`` they raise.
- ``ids.py``: ids of responses and output items.
"""

from providers.responses.request import BridgedRequest, to_chat
from providers.responses.response import from_chat
from providers.responses.stream import ChatToResponsesStream
from providers.responses.tools import ToolNames

__all__ = ["BridgedRequest", "ChatToResponsesStream", "ToolNames", "from_chat", "to_chat"]
