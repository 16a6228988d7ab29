"""Where the time goes: py-spy's collapsed stacks by category, and the report's section
(bench/pyspy.py, bench/report.py)."""

from __future__ import annotations

import pytest

from bench.pyspy import read_collapsed, summarize
from bench.report import Results

LOOP = (
    "thread (4242): MainThread;_run_module_as_main (<frozen runpy>:198);main (uvicorn/main.py:448)"
    ";Server.run (uvicorn/server.py:86);Runner.run (asyncio/runners.py:118)"
)
CALL = (
    LOOP + ";ApiHandler.handle.<locals>.process_request (gateway/api/handler.py:139)"
    ";ASGIHandler.run_get_response (django/core/handlers/asgi.py:248)"
    ";BaseHandler._get_response_async (django/core/handlers/base.py:253)"
    ";AsyncOperation.run (ninja/operation.py:510)"
    ";chat_completions (gateway/api/routes.py:77);Call.run (gateway/calls/pipeline.py:473)"
)
UPSTREAM = CALL + ";send_checked (providers/http.py:105);AsyncClient.send (httpx/_client.py:1629)"

STACKS = f"""\
{LOOP} 7
{UPSTREAM};Headers.encoding (httpx/_models.py:173) 10
{UPSTREAM};AiohttpTransport.handle_async_request (httpx_aiohttp/transport.py:80);\
ClientSession._request (aiohttp/client.py:900) 15
{CALL};Call.__init__ (gateway/calls/pipeline.py:120);uuid4 (uuid.py:723) 8
{CALL};Call.answer_json (gateway/calls/pipeline.py:321) 6
{CALL};validate_request (gateway/calls/parsing.py:42);\
PassThroughRequest.from_body (providers/base.py:49);\
BaseModel.model_validate (pydantic/main.py:792) 4
{CALL};LedgerWriter.record (gateway/usage/ledger.py:154) 12
{CALL};RequestLog.call_finished (gateway/telemetry/logs.py:80);\
Logger.info (logging/__init__.py:1489);\
StreamHandler.emit (logging/__init__.py:1113) 5
{CALL};Metrics.call_finished (gateway/telemetry/metrics.py:200);\
Histogram.observe (prometheus_client/metrics.py:600) 2
{CALL};authenticate (gateway/tenants/auth.py:196);key_matches (gateway/models.py:33);\
hash_key (gateway/models.py:22) 3
{LOOP};ApiHandler.handle (gateway/api/handler.py:131);\
ASGIHandler.create_request (django/core/handlers/asgi.py:283);\
ASGIRequest.__init__ (django/core/handlers/asgi.py:102) 14
{LOOP};ApiHandler.handle.<locals>.process_request (gateway/api/handler.py:139);\
ASGIHandler.run_get_response (django/core/handlers/asgi.py:248);\
BaseHandler._get_response_async (django/core/handlers/base.py:228) 2
{LOOP};ApiHandler.handle.<locals>.process_request (gateway/api/handler.py:141);\
ASGIHandler.send_response (django/core/handlers/asgi.py:353);\
RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:524) 7
{LOOP};ApiHandler.handle (gateway/api/handler.py:139);\
ASGIHandler.send_response (django/core/handlers/asgi.py:353) 4
thread (4242): MainThread 1
thread (4250): ledger-writer;Thread._bootstrap (threading.py:1002);\
LedgerWriter._run (gateway/usage/ledger.py:200);execute (django/db/backends/sqlite3/base.py:328) 40
thread (4260) 9
"""
"""The event loop's thread has 100 samples, so a category's samples are its share in %."""


@pytest.mark.parametrize(
    ("line", "category"),
    [
        (f"{LOOP} 1", "event loop: poll and dispatch"),
        (f"{LOOP};create_task (asyncio/tasks.py:384) 1", "event loop: poll and dispatch"),
        # uvicorn's server.py is also an ancestor of the loop's frame: the innermost decides
        (f"{LOOP};Server.on_tick (uvicorn/server.py:240) 1", "ASGI server: receive and send"),
        (f"{UPSTREAM};Headers.encoding (httpx/_models.py:173) 1", "upstream call: httpx"),
        (
            f"{UPSTREAM};AiohttpTransport.handle_async_request (httpx_aiohttp/transport.py:80) 1",
            "upstream call: aiohttp transport",
        ),
        # the gateway's own HTTP plumbing is the upstream call's, not "other gateway code"
        (
            f"{CALL};UpstreamTransport.handle_async_request (providers/http.py:110) 1",
            "upstream call: aiohttp transport",
        ),
        (f"{CALL};UpstreamClient.upstream (providers/http.py:170) 1", "upstream call: httpx"),
        (f"{CALL};post_for_json (providers/http.py:300) 1", "other gateway code"),
        # no rule claims uuid.py: the sample is its caller's, the call pipeline
        (
            f"{CALL};Call.__init__ (gateway/calls/pipeline.py:120);uuid4 (uuid.py:723) 1",
            "other gateway code",
        ),
        (f"{CALL};LedgerWriter.record (gateway/usage/ledger.py:154) 1", "ledger journal and queue"),
        (f"{CALL};hash_key (gateway/models.py:22) 1", "auth and limits"),
        (f"{CALL};Tenant.save (gateway/models.py:80) 1", "other gateway code"),
        (
            f"{CALL};BaseModel.model_validate (pydantic/main.py:792) 1",
            "JSON and validation (json, pydantic)",
        ),
        # the loop's frames are everyone's ancestors: they count only where the sample is
        (
            f"{LOOP};ASGIRequest.__init__ (django/core/handlers/asgi.py:102) 1",
            "Django and django-ninja",
        ),
        # granian's send is Rust: the sample shows the line that awaits it
        (
            f"{LOOP};ASGIHandler.send_response (django/core/handlers/asgi.py:353) 1",
            "ASGI server: receive and send",
        ),
        (
            f"{LOOP};ASGIHandler.send_response (django/core/handlers/asgi.py:353)"
            ";HttpResponse.items (django/http/response.py:200) 1",
            "Django and django-ninja",
        ),
        ("thread (4242): MainThread 1", "other"),
    ],
)
def test_a_sample_goes_to_the_innermost_frame_a_rule_claims(line: str, category: str) -> None:
    [stack] = read_collapsed(line)
    assert stack.category() == category


def test_threads_are_read_by_name_and_frames_without_line_numbers() -> None:
    stacks = read_collapsed(STACKS)
    assert sum(s.samples for s in stacks) == 149
    writer = stacks[-2]
    assert (writer.thread, writer.samples) == ("ledger-writer", 40)
    assert str(writer.frames[-1]) == "execute (django/db/backends/sqlite3/base.py)"
    assert (stacks[-1].thread, stacks[-1].frames) == ("thread 4260", ())
    assert read_collapsed("not a stack\n\n") == []


def test_the_summary_shares_the_event_loops_samples_only() -> None:
    profile = summarize(read_collapsed(STACKS), "bench/results/x-profile.txt")
    assert profile.samples == 100
    assert list(profile.categories.items()) == [
        ("Django and django-ninja", 16),
        ("upstream call: aiohttp transport", 15),
        ("other gateway code", 14),
        ("ledger journal and queue", 12),
        ("ASGI server: receive and send", 11),
        ("upstream call: httpx", 10),
        ("event loop: poll and dispatch", 7),
        ("request log", 5),
        ("JSON and validation (json, pydantic)", 4),
        ("auth and limits", 3),
        ("metrics", 2),
        ("other", 1),
    ]
    assert profile.share("ledger journal and queue") == pytest.approx(0.12)
    assert profile.other_threads == {"ledger-writer": 40, "thread 4260": 9}


def test_the_busiest_gateway_functions_count_what_they_called() -> None:
    profile = summarize(read_collapsed(STACKS), "bench/results/x-profile.txt")
    assert [(f.name, f.samples, f.own) for f in profile.functions] == [
        ("send_checked (providers/http.py)", 25, 0),
        ("ApiHandler.handle (gateway/api/handler.py)", 18, 0),  # two lines, one function
        ("LedgerWriter.record (gateway/usage/ledger.py)", 12, 12),
        ("ApiHandler.handle.<locals>.process_request (gateway/api/handler.py)", 9, 0),
        ("Call.__init__ (gateway/calls/pipeline.py)", 8, 0),
        ("Call.answer_json (gateway/calls/pipeline.py)", 6, 6),
        ("RequestLog.call_finished (gateway/telemetry/logs.py)", 5, 0),
        ("PassThroughRequest.from_body (providers/base.py)", 4, 0),
    ]


META = {
    "timestamp": "2026-12-01 10:00:00Z",
    "workers": 1,
    "database": "SQLite",
    "nproc": 2,
    "cpu": "test",
    "python": "3.11.7",
    "git": "abc1234",
    "wrk": "wrk 4.2.0",
    "delay_ms": 0.0,
    "stream_chunks": 20,
    "chunk_gap_ms": 0.0,
    "rounds": 1,
    "duration_s": 2.0,
}


def test_the_report_says_where_the_time_goes() -> None:
    results = Results(meta=META)
    results.profile = summarize(read_collapsed(STACKS), "bench/results/x-profile.txt")
    markdown = results.markdown()
    assert "Where the time goes (py-spy, c50), raw stacks in bench/results/x-profile.txt:" in (
        markdown
    )
    table = markdown[markdown.index("| category | share | samples |") :].splitlines()
    assert table[2:5] == [
        "| Django and django-ninja | 16.0% | 16 |",
        "| upstream call: aiohttp transport | 15.0% | 15 |",
        "| other gateway code | 14.0% | 14 |",
    ]
    assert "Other threads, samples while they ran: ledger-writer 40 (40% of the loop's)" in (
        markdown
    )
    assert "| LedgerWriter.record (gateway/usage/ledger.py) | 12.0% | 12 | 12 |" in markdown
    saved = results.to_json()["profile"]
    assert saved["categories"]["ledger journal and queue"] == 12
    assert saved["raw"] == "bench/results/x-profile.txt"


def test_without_profile_the_report_says_how_to_get_it() -> None:
    markdown = Results(meta=META).markdown()
    lines = [line for line in markdown.splitlines() if "Where the time goes" in line]
    assert lines == ["Where the time goes: not profiled in this run (`--profile` adds it)."]
    assert "| category |" not in markdown
    assert Results(meta=META).to_json()["profile"] is None
