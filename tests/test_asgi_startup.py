"""A worker's lifespan startup sets its interpreter for serving
(``tollgate.asgi.tune_interpreter``): run in a process of its own, as what it sets is the whole
process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

STARTS_A_WORKER = """
import asyncio, gc, json, sys

from tollgate import asgi  # sets Django up

from gateway import runtime

before = {"switch": sys.getswitchinterval(), "frozen": gc.get_freeze_count()}

class Drain:
    def watch_signals(self, grace):
        pass

class Runtime:  # what the lifespan asks of the runtime; the real one starts the ledger writer
    drain = Drain()
    async def start(self):
        pass
    async def aclose(self):
        pass

runtime.get_runtime = Runtime
messages = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]
sent = []

async def receive():
    return messages.pop()

async def send(message):
    sent.append(message["type"])

asyncio.run(asgi.application({"type": "lifespan"}, receive, send))
after = {"switch": sys.getswitchinterval(), "frozen": gc.get_freeze_count()}
print(json.dumps({"before": before, "after": after, "sent": sent}))
"""


def test_a_started_worker_sets_a_half_millisecond_gil_switch_and_freezes_startup(
    tmp_path: Path,
) -> None:
    """Python's 5 ms would let the ledger writer keep the event loop waiting that long, several
    times in one call; what startup loaded is frozen out of the collector's walks."""
    env = {**os.environ, "DJANGO_DEBUG": "true", "TOLLGATE_VAR_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", STARTS_A_WORKER],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["sent"] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert result["before"]["switch"] == 0.005
    assert result["after"]["switch"] == 0.0005
    assert result["before"]["frozen"] == 0
    assert result["after"]["frozen"] > 10_000
