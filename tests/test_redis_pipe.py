"""The counters' pipe to Redis (``gateway.limits.redis_pipe``): every command gets its own
reply, whatever its neighbours do (cancelled, timed out, cut off); a lost script, a lost
connection and a silent server are survived; the URL's password and database are used; what the
pipe does not know goes through redis-py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError
from support.private_services import private_redis
from support.redis_db import redis_url  # noqa: F401 - a fixture

from bench.processes import free_port
from gateway.limits.counters import RedisCounters
from gateway.limits.redis_pipe import NAME, Pipe


def pipe_for(url: str, timeout: float | None = 2.0) -> Pipe:
    pipe = Pipe.for_url(url, timeout)
    assert pipe is not None
    return pipe


async def test_concurrent_commands_each_get_their_own_reply(redis_url: str) -> None:  # noqa: F811
    pipe = pipe_for(redis_url)
    try:
        replies = await asyncio.gather(*(pipe.command(("ECHO", f"n{i}")) for i in range(300)))
    finally:
        pipe.close()
    assert replies == [f"n{i}".encode() for i in range(300)]


async def test_a_cancelled_command_leaves_the_others_their_replies(redis_url: str) -> None:  # noqa: F811
    pipe = pipe_for(redis_url)
    try:
        await pipe.command(("PING",))  # connected: the commands below are written at once
        tasks = [asyncio.create_task(pipe.command(("ECHO", str(i)))) for i in range(60)]
        await asyncio.sleep(0)  # every command written, none answered yet
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        after = await pipe.command(("ECHO", "after"))
    finally:
        pipe.close()
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == str(i).encode()
    assert after == b"after"


async def test_a_script_redis_no_longer_has_is_loaded_again(redis_url: str) -> None:  # noqa: F811
    pipe = pipe_for(redis_url)
    source = "return ARGV[1] .. KEYS[1]"
    sha = sync_redis.Redis.from_url(redis_url).script_load(source)
    try:
        assert await pipe.script(sha, source, ["k"], ["v"]) == b"vk"
        sync_redis.Redis.from_url(redis_url).script_flush()  # as a restarted Redis
        assert await pipe.script(sha, source, ["k"], ["w"]) == b"wk"
    finally:
        pipe.close()


def _kill_pipes(url: str) -> None:
    client = sync_redis.Redis.from_url(url)
    for entry in client.client_list():
        if entry["name"] == NAME:
            client.client_kill_filter(_id=entry["id"])


async def test_a_killed_connection_fails_what_waits_on_it_and_the_next_command_reconnects(
    redis_url: str,  # noqa: F811
) -> None:
    pipe = pipe_for(redis_url, timeout=None)
    try:
        blocked = asyncio.create_task(pipe.command(("BLPOP", "tg:test:nothing", 10)))
        await asyncio.sleep(0.2)  # Redis holds the BLPOP
        await asyncio.to_thread(_kill_pipes, redis_url)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(blocked, 5)
        assert await pipe.command(("ECHO", "again")) == b"again"
    finally:
        pipe.close()


async def test_no_answer_in_time_is_a_timeout_and_the_next_command_reconnects() -> None:
    connections = 0

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        silent = connections == 1  # the first connection is never answered
        while data := await reader.read(65536):
            if not silent:
                writer.write(b"+OK\r\n" * data.count(b"*"))  # one reply a command
        writer.close()

    listening = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    pipe = pipe_for(f"redis://127.0.0.1:{port}", timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await pipe.command(("PING",))
        assert await pipe.command(("PING",)) == b"OK"
    finally:
        pipe.close()
        listening.close()
    assert connections == 2


async def test_a_refused_connection_is_a_connection_error() -> None:
    pipe = pipe_for(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(ConnectionError):
        await pipe.command(("PING",))


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    """A private redis-server that asks for the password ``secret``."""
    with private_redis(tmp_path, password="secret") as server:
        yield server.port


async def test_the_urls_password_and_database_are_used(redis_with_password: int) -> None:
    port = redis_with_password
    for url in (
        f"redis://:secret@127.0.0.1:{port}/3",
        f"redis://default:secret@127.0.0.1:{port}/3",
    ):
        pipe = pipe_for(url)
        try:
            assert await pipe.command(("SET", "tg:test:db", url)) == b"OK"
        finally:
            pipe.close()
        stored = sync_redis.Redis(port=port, password="secret", db=3).get("tg:test:db")
        assert stored == url.encode()
    wrong = pipe_for(f"redis://:wrong@127.0.0.1:{port}/3")
    with pytest.raises(AuthenticationError):
        await wrong.command(("PING",))


def test_tls_and_options_the_pipe_does_not_know_go_through_redis_py() -> None:
    for url in ("rediss://127.0.0.1:6380/0", "redis://127.0.0.1:6379/0?socket_keepalive=true"):
        assert Pipe.for_url(url, 0.5) is None
        assert RedisCounters(url)._pipe is None
    for url in ("redis://127.0.0.1:6379/2", "unix:///run/redis.sock?db=1"):
        assert Pipe.for_url(url, 0.5) is not None


def test_a_pipe_used_on_another_loop_connects_again(redis_url: str) -> None:  # noqa: F811
    """The first loop is closed with the connection it made: the second loop does not touch it."""
    pipe = pipe_for(redis_url)
    assert asyncio.run(pipe.command(("ECHO", "first"))) == b"first"
    assert asyncio.run(pipe.command(("ECHO", "second"))) == b"second"
    pipe.close()


async def test_a_command_on_a_connection_lost_meanwhile_is_a_connection_error() -> None:
    """Redis may close a connection between the pipe taking it and writing to it (past its
    maxclients it closes a new one at once): the command fails as Redis being down does (the
    policy then counts in memory or answers 503), not with an error no one catches (a 500)."""
    from gateway.limits.redis_pipe import _Connection

    connection = _Connection(asyncio.get_running_loop())
    connection.connection_lost(None)  # before anything was written
    with pytest.raises(ConnectionError):
        await connection.send(b"*1\r\n$4\r\nPING\r\n", 1.0)
