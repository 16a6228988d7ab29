"""Logs: JSON lines when ``TOLLGATE_LOG_FORMAT=json``, and a line per API request.

**Format.** ``JsonFormatter`` writes every record as one JSON object on one line: ``time`` (UTC,
ISO 8601, milliseconds), ``level``, ``logger``, ``message``, and an exception as one field
(``exception``, its traceback with the newlines escaped), never as a multi-line traceback. It is
the formatter of the one handler ``settings.LOGGING`` puts on the root logger, and
``configure_logging`` (Django's ``LOGGING_CONFIG``) also gives it to the handlers uvicorn set up
on its own loggers before it imported the app, and routes warnings and uncaught exceptions
through logging, so that a gateway run by ``uvicorn tollgate.asgi:application`` writes nothing
but JSON lines.

**Request log** (``TOLLGATE_REQUEST_LOG``, on by default): one record per API request on the
``tollgate.requests`` logger. A call's is written by ``RequestLog`` once the call is recorded
and answered (``gateway.telemetry``); a request that made no call (refused before one, such as a
bad key, or answered by the gateway alone, such as the model list) gets one from the API's
middleware (``request_answered``). The record's message is a ``RequestLine``: its fields
become the JSON line's, and a text formatter prints a short readable line. What it never
holds: prompts, answers, headers, keys (only the key's public prefix, as the admin shows it).

**Writing.** The root's one handler is a ``ConsoleHandler`` (stderr; its formatter
``TextFormatter`` or ``JsonFormatter``). Every record but a request line is written at once. A
request line written on the event loop is held back, at most ``HOLD_SECONDS`` (0.1 s), and
written with the lines after it: when the next would take the held lines past ``PIPE_BUF``
(4096 bytes), when the 0.1 s are up, when any other record is written (after them, in the same
write when it fits), and at the end: the ASGI lifespan's shutdown (``RequestLog.shutdown``, from
``Runtime.aclose``; any line after it is written at once), which is what counts under a server
(uvicorn's worker, stopped by SIGTERM, raises it again once shut down: it dies of the signal,
running no exit handler; granian's forked workers end by ``os._exit``) and, in a process without
lifespan, logging's exit handler (``logging.shutdown``). Off the event loop (a thread, a management
command), a line is written at once. Each write holds whole lines only, and at most ``PIPE_BUF``
bytes unless one line is longer (it goes alone): the workers share stderr, a pipe, where a write
that size is never split by another process's. A process killed by SIGKILL loses the request
lines it held: at most 4096 bytes of them (about 6 JSON lines, 23 text lines), none older than
0.1 s unless its event loop was stuck; the ledger has their calls.

When nothing on its way could drop or change the record (no filter on ``tollgate.requests`` and
its parents, and this handler the only one, as ``settings.LOGGING`` sets it), a request line is
made by the handler's formatter from its fields, without a ``LogRecord``
(``ConsoleHandler.write_request_line``): the same line, at a fraction of the cost. Otherwise
(pytest's ``caplog``, a filter of your own) it goes through ``requests_log.info``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import logging.config
import select
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
from django.conf import settings

from gateway.telemetry import endpoint_name

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

    from gateway.calls.pipeline import Call

requests_log = logging.getLogger("tollgate.requests")

HOLD_SECONDS = 0.1
"""How long a request line may wait for the lines after it (``ConsoleHandler``)."""

SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "django.server")
"""Loggers whose servers give them handlers of their own (uvicorn before the app is imported,
Django's runserver): with ``json``, their handlers get the JSON formatter too."""


class RequestLine:
    """The message of a request-log record: ``fields`` (a flat dict of plain values), written
    as the JSON line's own fields, or as a short line by a text formatter (``str``), where what
    is not printable is escaped (the path and the model are the caller's)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        f = self.fields
        parts = [f["request_id"], str(f["status"])]
        if f.get("error_type"):
            parts.append(f["error_type"])
        if "endpoint" in f:
            parts += [f["endpoint"], f["model"] or "-"]
            if f["deployment"]:
                parts.append(f"-> {f['deployment']}")
        else:
            parts += [f["method"], f["path"]]
        if f.get("latency_ms") is not None:
            parts.append(f"{f['latency_ms']} ms")
        if "endpoint" in f:
            parts.append(f"tokens {f['prompt_tokens'] or 0}+{f['completion_tokens'] or 0}")
            parts.append("$" + f"{f['cost_usd']:.8f}".rstrip("0").rstrip("."))
            if f["attempts"] > 1 or f["fallback"]:
                parts.append(f"attempts {f['attempts']}" + (" fallback" if f["fallback"] else ""))
        if f.get("tenant"):
            parts.append(f"tenant {f['tenant']} key {f['key_prefix']}")
        line = " ".join(parts)
        return line if line.isprintable() else _escaped(line)


def _escaped(text: str) -> str:
    """``text`` with each character that is not printable escaped as Python writes it (``\\n``,
    ``\\x00``): a caller's path or model name holding a newline cannot forge a line of its own."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


@functools.lru_cache(maxsize=4)
def _local_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def _msecs(created: float) -> int:
    """The milliseconds of ``time.time()``'s ``created``, as ``LogRecord.msecs``."""
    return int((created - int(created)) * 1000)


def _json_line(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:  # a lone surrogate in some text: orjson refuses it, json escapes it
        return json.dumps(entry, default=str)


class LineFormatter(logging.Formatter):
    """A formatter that also writes a request line without a record (``ConsoleHandler``)."""

    def request_line(self, line: RequestLine, created: float) -> str:
        """What ``format`` makes of an INFO record of ``tollgate.requests`` with ``line`` as its
        message, created at ``created`` (``time.time()``)."""
        raise NotImplementedError


class TextFormatter(LineFormatter):
    """``%(asctime)s %(levelname)s %(name)s: %(message)s``, the time as logging's default (local,
    milliseconds after a comma)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{_local_second(int(record.created))},{int(record.msecs):03d}"

    def request_line(self, line: RequestLine, created: float) -> str:
        asctime = f"{_local_second(int(created))},{_msecs(created):03d}"
        return f"{asctime} INFO {requests_log.name}: {line}"


class JsonFormatter(LineFormatter):
    """One JSON object per line for every record (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        if isinstance(record.msg, RequestLine):
            entry["message"] = "request"
            entry.update(record.msg.fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _json_line(entry)

    def request_line(self, line: RequestLine, created: float) -> str:
        return _json_line(
            {
                "time": f"{_utc_second(int(created))}.{_msecs(created):03d}Z",
                "level": "INFO",
                "logger": requests_log.name,
                "message": "request",
                **line.fields,
            }
        )


class ConsoleHandler(logging.StreamHandler):
    """The root's handler (``settings.LOGGING``): holds request lines back and writes them with
    the lines after them, whole lines and at most ``PIPE_BUF`` bytes a write (see the module's
    docstring)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.holding = True
        """False once the runtime has closed: every line is written at once."""
        self._held: list[str] = []
        self._held_bytes = 0
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        """The event loop on which a flush is due in ``HOLD_SECONDS``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        if record.name == requests_log.name and record.levelno < logging.WARNING:
            self._hold(text)
        else:
            self._add(text)
            self._write_held()

    def write_request_line(self, line: RequestLine) -> None:
        """Write ``line`` as ``emit`` would write its record, without making one (only when no
        filter is on the way, and this handler's formatter is a ``LineFormatter``)."""
        assert isinstance(self.formatter, LineFormatter)
        try:
            text = self.formatter.request_line(line, time.time()) + self.terminator
        except Exception:  # logging reports it, as for any record it cannot format
            requests_log.info(line)
            return
        with self.lock:  # type: ignore[union-attr]
            self._hold(text)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_loop = None
            self._write_held()
        super().flush()

    def stop_holding(self) -> None:
        """Write the lines held, and every line at once from now on."""
        self.holding = False
        self.flush()

    def _hold(self, text: str) -> None:
        self._add(text)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop: nothing would flush it
            loop = None
        if loop is None or not self.holding:
            self._write_held()
        elif self._flush_loop is not loop:  # none due, or due on a loop that may be gone
            self._flush_loop = loop
            loop.call_later(HOLD_SECONDS, self.flush)

    def _add(self, text: str) -> None:
        size = len(text) if text.isascii() else len(text.encode())
        if self._held_bytes + size > select.PIPE_BUF:
            self._write_held()
        self._held.append(text)
        self._held_bytes += size

    def _write_held(self) -> None:
        if not self._held:
            return
        text = "".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        if getattr(self.stream, "closed", False):  # closed under us (pytest's capture at exit)
            self.stream = sys.stderr
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: logging reports it
            self.handleError(logging.makeLogRecord({"name": requests_log.name, "msg": text}))


def configure_logging(config: dict[str, Any]) -> None:
    """Django's ``LOGGING_CONFIG``: apply ``config`` (``settings.LOGGING``); with
    ``TOLLGATE_LOG_FORMAT=json``, also give the JSON formatter to the handlers servers set up on
    their own loggers (uvicorn's, whichever its flags left: ``--no-access-log`` stays off), and
    send warnings and uncaught exceptions through logging instead of raw to stderr."""
    logging.config.dictConfig(config)
    if settings.TOLLGATE_LOG_FORMAT != "json":
        return
    formatter = JsonFormatter()
    for name in SERVER_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("tollgate").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("tollgate").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


# --- the request log ----------------------------------------------------------------------------


class RequestLog:
    """The request log's observer of calls (``Runtime.observers``): one record per call."""

    def shutdown(self) -> None:
        """The runtime closes (lifespan shutdown): write the request lines held back, and any
        after them at once (the process may end without running exit handlers)."""
        logger: logging.Logger | None = requests_log
        while logger is not None:
            for handler in logger.handlers:
                if isinstance(handler, ConsoleHandler):
                    handler.stop_holding()
            logger = logger.parent if logger.propagate else None

    def call_finished(self, call: Call, row: dict[str, Any]) -> None:
        if not requests_log.isEnabledFor(logging.INFO):
            return
        caller, route = call.caller, call.route
        fields: dict[str, Any] = {
            "request_id": call.request_id,
            "tenant_id": caller.tenant_id,
            "tenant": caller.tenant_name,
            "key_id": caller.key_id,
            "key_prefix": caller.key_prefix,
            "endpoint": endpoint_name(call),
            "model": row["requested_model"],
            "served_model": row["served_model"],
            "provider": row["provider"],
            "deployment": route.deployment if route is not None and call.attempts else "",
            "status": row["status_code"],
            "error_type": row["error_type"],
            "latency_ms": row["latency_ms"],
            "upstream_ms": int(call.upstream_seconds * 1000),
            "first_chunk_ms": int((call.answer_started - call.started) * 1000)
            if call.stream and call.answer_started is not None
            else None,
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cache_read_tokens": row["cache_read_tokens"],
            "cache_write_tokens": row["cache_write_tokens"],
            "reasoning_tokens": row["reasoning_tokens"],
            "usage_estimated": row["usage_estimated"],
            "cost_usd": float(row["cost_usd"]),
            "attempts": row["attempts"],
            "fallback": row["fallback"],
            "stream": row["stream"],
        }
        if "image_count" in row:
            fields["image_count"] = row["image_count"]
            fields["input_characters"] = row["input_characters"]
            fields["audio_seconds"] = row["audio_seconds"]
        log_request_line(fields)


def request_answered(
    request_id: str,
    method: str,
    path: str,
    response: HttpResponseBase,
    request: HttpRequest | None = None,
    started: float | None = None,
) -> None:
    """The request line of an API request that made no call: refused before one (a bad key, an
    unknown path, a body too large) or answered by the gateway alone (the model list, usage).
    The caller is named when it was authenticated; the key it presented, never."""
    if not settings.TOLLGATE_REQUEST_LOG or not requests_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": response.status_code,
        "error_type": _error_type(response),
        "latency_ms": int((time.perf_counter() - started) * 1000) if started else None,
    }
    # A Caller once authenticated; its class is not imported: this module loads with the settings.
    caller = getattr(request, "auth", None)
    if caller is not None and hasattr(caller, "tenant_id"):
        fields["tenant_id"] = caller.tenant_id
        fields["tenant"] = caller.tenant_name
        fields["key_id"] = caller.key_id
        fields["key_prefix"] = caller.key_prefix
    log_request_line(fields)


def log_request_line(fields: dict[str, Any]) -> None:
    """The request line with ``fields`` on ``tollgate.requests``: given to its one handler as it
    is, when nothing on its way could drop or change it, else through logging."""
    line = RequestLine(fields)
    handler = _sole_console_handler()
    if handler is None:
        requests_log.info(line)
    else:
        handler.write_request_line(line)


def _sole_console_handler() -> ConsoleHandler | None:
    """The handler of a request record when nothing on its way could drop or change it: no
    filter on ``tollgate.requests`` and its parents, one handler, a ``ConsoleHandler`` with a
    ``LineFormatter`` and no filter (as ``settings.LOGGING`` sets it; pytest's ``caplog`` adds
    one). None otherwise: the line then goes through ``requests_log.info``."""
    found: logging.Handler | None = None
    logger: logging.Logger | None = requests_log
    while logger is not None:
        if logger.filters:
            return None
        for handler in logger.handlers:
            if found is not None:
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    if (
        isinstance(found, ConsoleHandler)
        and isinstance(found.formatter, LineFormatter)
        and not found.filters
        and found.level <= logging.INFO
    ):
        return found
    return None


def _error_type(response: HttpResponseBase) -> str:
    """The code (else the type) of an error answer, as a call's row keeps it: the error's own
    when the gateway rendered it (``gateway.api.errors``, in either API's shape), else read from
    the JSON body."""
    if response.status_code < 400 or response.streaming:
        return ""
    if (code := getattr(response, "error_code", None)) is not None:
        return str(code)
    try:
        error = orjson.loads(response.content).get("error")  # type: ignore[attr-defined]
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    return str(error.get("code") or error.get("type") or "")
