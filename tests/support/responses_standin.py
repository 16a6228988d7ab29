"""A stand-in for the gateway's ``POST /v1/responses``, to check the Codex harness by itself
(tests/test_codex_harness.py): an HTTP server in a thread of the test process that records every
request and answers as the fake upstream's ``agent`` model does (tests/fake_agent.py), in the
Responses API's streamed shape (a JSON answer when ``stream`` is false). It keeps what it
answered, for ``GET`` and ``DELETE /v1/responses/{id}``: it also plays an upstream that serves
the Responses API itself (tests/test_e2e_responses_native.py).

It sends only what Codex 0.171.0 cannot do without: each output item in a
``response.output_item.done`` event, then ``response.completed`` with the usage. (Codex ignores
an item it gets no ``output_item.done`` for, and fails a stream that ends before
``response.completed``.) Any other path: 404 in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_agent import TOOL_ARGUMENTS, TOOL_NAME, quoted, text_of

USAGE = {
    "input_tokens": 11,
    "input_tokens_details": {"cached_tokens": 3},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 16,
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the JSON, or None


@dataclass
class ResponsesStandIn:
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Responses answered, by id: what ``GET`` and ``DELETE /v1/responses/{id}`` serve (as an
    upstream that keeps state does; the gateway's native route relies on it)."""


def agent_item(body: Any) -> dict[str, Any]:
    """The one output item of the agent's answer to a Responses request."""
    items = body.get("input") if isinstance(body, dict) else None
    last = items[-1] if isinstance(items, list) and items and isinstance(items[-1], dict) else {}
    tools = body.get("tools") if isinstance(body, dict) else None
    text = "hi"
    if last.get("type") == "function_call_output":
        text = "Done: " + quoted(text_of(last.get("output")))
    elif (
        last.get("role") == "user"
        and isinstance(tools, list)
        and any(isinstance(tool, dict) and tool.get("name") == TOOL_NAME for tool in tools)
    ):
        arguments = json.dumps(TOOL_ARGUMENTS)
        return {
            "type": "function_call",
            "call_id": "call_standin",
            "name": TOOL_NAME,
            "arguments": arguments,
        }
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": "msg_standin", "role": "assistant", "content": content}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _record(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.standin.requests.append(RecordedRequest(self.command, self.path, headers, body))
        return body

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record()
        stored = self.server.standin.stored.get(self.path.removeprefix("/v1/responses/"))
        if stored is None:
            return self._not_found()
        self._send(200, "application/json", json.dumps(stored).encode())

    def do_DELETE(self) -> None:
        self._record()
        response_id = self.path.removeprefix("/v1/responses/")
        if self.server.standin.stored.pop(response_id, None) is None:
            return self._not_found()
        deleted = {"id": response_id, "object": "response", "deleted": True}
        self._send(200, "application/json", json.dumps(deleted).encode())

    def do_POST(self) -> None:
        body = self._record()
        if self.path != "/v1/responses":
            return self._not_found()
        item = agent_item(body)
        number = len(self.server.standin.requests)
        response = {"id": f"resp_standin_{number}", "object": "response", "status": "completed"}
        whole = {**response, "output": [item], "usage": USAGE}
        self.server.standin.stored[whole["id"]] = whole
        if isinstance(body, dict) and body.get("stream") is False:
            return self._send(200, "application/json", json.dumps(whole).encode())
        events: list[dict[str, Any]] = [
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {
                "type": "response.completed",
                "response": {**response, "output": [item], "usage": USAGE},
            },
        ]
        stream = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
        self._send(200, "text/event-stream", stream.encode())

    def _not_found(self) -> None:
        message = f"Unknown request URL: {self.command} {self.path}."
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
        self._send(404, "application/json", json.dumps({"error": error}).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: ResponsesStandIn


@contextlib.contextmanager
def responses_standin() -> Iterator[ResponsesStandIn]:
    """Serve on a free port of 127.0.0.1; yield its base URL and the requests it records."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.standin = ResponsesStandIn(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
