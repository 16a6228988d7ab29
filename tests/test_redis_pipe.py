"""The counters' pipe to Redis (``gateway.limits.redis_pipe``): every command gets its own
reply, whatever its neighbours do (cancelled, timed out, cut off); a lost script, a lost
connection and a silent server are survived; the URL's password and database are used; TLS
(``rediss://``) connects or fails exactly as redis-py does, against a private redis-server serving
TLS with a throwaway CA; what the pipe does not know goes through redis-py."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as sync_redis
import redis.asyncio
import uvloop
from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError
from support.private_services import PrivateRedis, private_redis
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


def test_options_the_pipe_does_not_know_go_through_redis_py() -> None:
    for url in (
        "redis://127.0.0.1:6379/0?socket_keepalive=true",
        "rediss://127.0.0.1:6380/0?ssl_min_version=TLSv1_2",  # a string: redis-py fails with it
        "rediss://127.0.0.1:6380/0?ssl_ca_certs=/ca.pem&socket_keepalive=true",
        "redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem",  # TLS's options, without TLS
        "unix://?db=1",  # no socket named
    ):
        assert Pipe.for_url(url, 0.5) is None, url
        assert RedisCounters(url)._pipe is None, url
    for url in (
        "redis://127.0.0.1:6379/2",
        "unix:///run/redis.sock?db=1",
        "rediss://127.0.0.1:6380/0",
        "rediss://u:p@127.0.0.1:6380/0?ssl_cert_reqs=optional&ssl_ca_certs=/ca.pem",
    ):
        assert Pipe.for_url(url, 0.5) is not None, url
        assert RedisCounters(url)._pipe is not None, url


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A private redis-server serving TLS too (``tls_port``), with a certificate for 127.0.0.1
    only, signed by a throwaway CA (``tls.ca``); it does not ask clients for certificates."""
    with private_redis(tmp_path_factory.mktemp("tls"), tls=True) as server:
        yield server


def tls_url(server: PrivateRedis, query: str = "", host: str = "127.0.0.1", db: int = 0) -> str:
    assert server.tls is not None
    ca_pem = quote(server.tls.ca.read_text(), safe="")
    return f"rediss://{host}:{server.tls_port}/{db}?" + query.format(
        ca=server.tls.ca, ca_pem=ca_pem
    )


async def test_scripts_and_commands_go_down_the_pipe_over_tls(tls_redis: PrivateRedis) -> None:
    url = tls_url(tls_redis, "ssl_ca_certs={ca}", db=2)
    assert RedisCounters(url)._pipe is not None
    pipe = pipe_for(url)
    source = "return ARGV[1] .. KEYS[1]"
    sha = hashlib.sha1(source.encode()).hexdigest()  # not loaded yet: NOSCRIPT, then loaded
    try:
        replies = await asyncio.gather(*(pipe.command(("ECHO", f"n{i}")) for i in range(100)))
        assert await pipe.script(sha, source, ["k"], ["v"]) == b"vk"
        assert await pipe.command(("SET", "tg:test:tls", "yes")) == b"OK"
        clients = sync_redis.Redis(port=tls_redis.port).client_list()
    finally:
        pipe.close()
    assert replies == [f"n{i}".encode() for i in range(100)]
    assert sync_redis.Redis(port=tls_redis.port, db=2).get("tg:test:tls") == b"yes"
    [ours] = [client for client in clients if client["name"] == NAME]
    assert ours["laddr"] == f"127.0.0.1:{tls_redis.tls_port}"  # Redis's TLS port, not its plain one


@pytest.mark.parametrize(
    ("host", "query", "error"),
    [
        ("127.0.0.1", "ssl_ca_certs={ca}", None),
        ("127.0.0.1", "ssl_ca_data={ca_pem}", None),
        ("127.0.0.1", "", "self-signed certificate in certificate chain"),  # not a system CA
        ("127.0.0.1", "ssl_cert_reqs=optional", "self-signed certificate in certificate chain"),
        # (optional: a certificate the server sends is verified all the same)
        ("localhost", "ssl_ca_certs={ca}", "Hostname mismatch"),  # not a name it carries
        ("localhost", "ssl_ca_certs={ca}&ssl_check_hostname=false", None),
        ("localhost", "ssl_cert_reqs=none", None),  # nothing verified, as asked
        ("127.0.0.1", "ssl_ca_certs={ca}&ssl_ciphers=nonsense", "No cipher can be selected"),
    ],
)
async def test_tls_connects_or_fails_as_redis_py_does(
    tls_redis: PrivateRedis, host: str, query: str, error: str | None
) -> None:
    """The same URL connects through the pipe and through redis-py, or fails in both with
    redis-py's ``ConnectionError`` (Redis down, to the counters), for the same reason."""
    url = tls_url(tls_redis, query, host)
    pipe = pipe_for(url)
    client = redis.asyncio.from_url(url, socket_connect_timeout=2)
    try:
        for ping in (lambda: pipe.command(("PING",)), client.ping):
            if error is None:
                assert await ping()
            else:
                with pytest.raises(ConnectionError, match=error):
                    await ping()
    finally:
        pipe.close()
        await client.aclose()


@pytest.fixture
def tls_redis_asking_certificates(tmp_path: Path) -> Iterator[PrivateRedis]:
    """As ``tls_redis``, but refusing a TLS client without a certificate signed by ``tls.ca``."""
    with private_redis(tmp_path, tls=True, tls_auth_clients="yes") as server:
        yield server


async def test_the_urls_client_certificate_is_sent(
    tls_redis_asking_certificates: PrivateRedis,
) -> None:
    server = tls_redis_asking_certificates
    assert server.tls is not None
    without = pipe_for(tls_url(server, "ssl_ca_certs={ca}"))
    with pytest.raises(ConnectionError):
        await without.command(("PING",))
    query = f"ssl_ca_certs={{ca}}&ssl_certfile={server.tls.client_cert}"
    pipe = pipe_for(tls_url(server, f"{query}&ssl_keyfile={server.tls.client_key}"))
    try:
        assert await pipe.command(("PING",)) == b"PONG"
    finally:
        pipe.close()


def test_tls_on_uvloop(tls_redis: PrivateRedis) -> None:
    """The server's loop, uvloop, has its own TLS: the same outcomes."""

    async def ping(url: str) -> object:
        pipe = pipe_for(url)
        try:
            return await pipe.command(("PING",))
        finally:
            pipe.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(ping(tls_url(tls_redis, "ssl_ca_certs={ca}"))) == b"PONG"
        with pytest.raises(ConnectionError, match="certificate verify failed"):
            runner.run(ping(tls_url(tls_redis)))
        with pytest.raises(ConnectionError, match="Hostname mismatch"):
            runner.run(ping(tls_url(tls_redis, "ssl_ca_certs={ca}", "localhost")))


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
