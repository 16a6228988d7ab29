"""Where the gateway's time goes: py-spy's collapsed stacks, each sample given one category.

``py-spy record --format raw --threads`` writes one line per distinct stack, outermost frame
first, with the number of samples that saw it::

    thread (4242): MainThread;Runner.run (asyncio/runners.py:118);...;uuid4 (uuid.py:723) 26

A sample's category is decided by walking its frames from the innermost outwards: the first
frame that a rule of ``RULES`` matches decides, the rules being tried in the table's order on
each frame. So a sample in ``uuid4`` called by the call pipeline is the pipeline's (no rule
claims ``uuid.py``), while one in pydantic called by the pipeline is pydantic's. C extensions
(orjson, httptools, uvloop, pydantic-core, granian's Rust) have no frame of their own: their
time lands on the Python line that called them. See bench/README.md, "Where the time goes".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

LOOP_THREAD = "MainThread"
"""The thread that runs the event loop, under uvicorn and under granian alike."""
GATEWAY_FILES = ("gateway/", "providers/", "tollgate/")
"""The gateway's own code, as py-spy names files: from the package down."""

EVENT_LOOP = "event loop: poll and dispatch"
SERVER = "ASGI server: receive and send"
AUTH = "auth and limits"
OTHER = "other"


@dataclass(frozen=True)
class Rule:
    """Frames in ``files`` (path prefixes) or named in ``functions`` (with ``files``: both must
    hold) belong to ``category``."""

    category: str
    files: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()

    def matches(self, frame: Frame) -> bool:
        if self.files and not frame.file.startswith(self.files):
            return False
        return not self.functions or frame.function in self.functions


RULES: tuple[Rule, ...] = (
    # The loop itself: a sample stops here when the loop's C code runs (uvloop's callbacks,
    # libuv's poll), or a library no rule claims that the loop called directly.
    Rule(
        EVENT_LOOP,
        files=(
            "asyncio/runners.py",
            "asyncio/base_events.py",
            "asyncio/events.py",
            "asyncio/selector_events.py",
            "selectors.py",
            "uvloop/",
            "granian/server/",  # a granian worker's loop.run_forever()
        ),
    ),
    # These do little but await the server's receive() or send(), which under granian are Rust,
    # with no frame of their own: a sample in them is the server's.
    Rule(
        SERVER,
        functions=(
            "ASGIHandler.listen_for_disconnect",
            "ASGIHandler.send_response",
            "ApiHandler._read_body",
        ),
    ),
    Rule(SERVER, files=("uvicorn/", "granian/", "httptools/", "h11/")),
    Rule("upstream call: httpx", files=("httpx/", "httpcore/")),
    # The gateway's own HTTP plumbing (providers/http.py): its client's request building is
    # httpx's work done its way, its transport aiohttp's.
    Rule(
        "upstream call: httpx",
        files=("providers/http.py",),
        functions=("UpstreamClient.upstream", "UpstreamClient.send_upstream"),
    ),
    Rule(
        "upstream call: aiohttp transport",
        files=("providers/http.py",),
        functions=(
            "UpstreamTransport.handle_async_request",
            "UpstreamTransport._response",
            "UpstreamTransport._timeout",
            "_aiohttp_headers",
            "_answer_extensions",
        ),
    ),
    Rule(
        "upstream call: aiohttp transport",
        files=("httpx_aiohttp/", "aiohttp/", "aiohappyeyeballs/", "yarl/", "multidict/"),
    ),
    Rule(
        "ledger journal and queue",
        files=("gateway/usage/ledger.py", "gateway/usage/ledger_files.py"),
    ),
    Rule("request log", files=("gateway/telemetry/logs.py", "logging/")),
    Rule(
        "metrics",
        files=(
            "gateway/telemetry/metrics.py",
            "gateway/telemetry/pending.py",
            "gateway/telemetry/multiprocess.py",
            "prometheus_client/",
        ),
    ),
    Rule("traces", files=("gateway/telemetry/traces.py", "opentelemetry/")),
    Rule(AUTH, files=("gateway/tenants/", "gateway/limits/")),
    Rule(AUTH, files=("gateway/models.py",), functions=("hash_key", "key_matches")),
    Rule("JSON and validation (json, pydantic)", files=("json/", "pydantic/", "pydantic_core/")),
    Rule("Django and django-ninja", files=("django/", "ninja/", "asgiref/")),
    Rule("other gateway code", files=GATEWAY_FILES),
)


@dataclass(frozen=True)
class Frame:
    function: str
    file: str  # as py-spy shortens it: "gateway/usage/ledger.py", "uuid.py", "<frozen runpy>"

    @classmethod
    def parse(cls, text: str) -> Frame:
        """``Qualified.name (file:line)``; the line number is dropped."""
        match = re.fullmatch(r"(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)", text)
        if match is None:
            return cls(text, "")
        return cls(match["function"], match["file"])

    @property
    def gateway(self) -> bool:
        return self.file.startswith(GATEWAY_FILES)

    def __str__(self) -> str:
        return f"{self.function} ({self.file})"


@dataclass(frozen=True)
class Stack:
    thread: str  # the thread's name, or "thread <tid>" when it has none
    frames: tuple[Frame, ...]  # outermost first
    samples: int

    def category(self) -> str:
        for frame in reversed(self.frames):
            for rule in RULES:
                if rule.matches(frame):
                    return rule.category
        return OTHER

    def innermost_gateway_frame(self) -> tuple[Frame, bool] | None:
        """The gateway's function the sample was in (its own lines or a library it called), and
        whether it was in its own lines."""
        for depth, frame in enumerate(reversed(self.frames)):
            if frame.gateway:
                return frame, depth == 0
        return None


_THREAD = re.compile(r"thread \((?P<tid>\w+)\)(?:: (?P<name>.+))?")


def read_collapsed(text: str) -> list[Stack]:
    """py-spy's raw output (recorded with ``--threads``): one ``Stack`` per line."""
    stacks = []
    for line in text.splitlines():
        path, _, count = line.rpartition(" ")
        if not path or not count.isdigit():
            continue
        first, *rest = path.split(";")
        if thread := _THREAD.fullmatch(first):
            name = thread["name"] or f"thread {thread['tid']}"
        else:  # recorded without --threads
            name, rest = "", [first, *rest]
        stacks.append(Stack(name, tuple(Frame.parse(f) for f in rest), int(count)))
    return stacks


@dataclass(frozen=True)
class GatewayFunction:
    name: str  # "Call.run (gateway/calls/pipeline.py)"
    samples: int  # the innermost gateway frame: its own lines and the libraries it called
    own: int  # the innermost frame of all: its own lines (and the C calls on them)


@dataclass(frozen=True)
class Profile:
    """The event loop's samples by category, its busiest gateway functions, the other threads."""

    raw: str  # the collapsed stacks' file, relative to the repository
    samples: int  # the loop thread's
    categories: dict[str, int]  # most samples first
    functions: list[GatewayFunction]
    other_threads: dict[str, int]

    def share(self, category: str) -> float:
        return self.categories.get(category, 0) / self.samples if self.samples else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "thread": LOOP_THREAD,
            "samples": self.samples,
            "categories": self.categories,
            "functions": [vars(f) for f in self.functions],
            "other_threads": self.other_threads,
        }


def summarize(stacks: list[Stack], raw: str, top: int = 8) -> Profile:
    """The loop thread's samples by category and its ``top`` gateway functions; the other
    threads' sample counts. ``raw`` names the file the stacks came from, for the report."""
    categories: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for stack in stacks:
        threads[stack.thread] += stack.samples
        if stack.thread != LOOP_THREAD:
            continue
        categories[stack.category()] += stack.samples
        if found := stack.innermost_gateway_frame():
            frame, is_own = found
            functions[str(frame)] += stack.samples
            own[str(frame)] += stack.samples if is_own else 0
    loop = threads.pop(LOOP_THREAD, 0)
    return Profile(
        raw=raw,
        samples=loop,
        categories=dict(categories.most_common()),
        functions=[GatewayFunction(n, s, own[n]) for n, s in functions.most_common(top)],
        other_threads=dict(threads.most_common()),
    )
