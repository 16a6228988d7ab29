"""The provider layer stands on its own: it imports without Django, without an import circle, and
every provider type implements the whole contract."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ROOT
from providers.base import BaseProvider
from providers.config import ProviderConfig
from providers.factory import ProviderFactory
from providers.http import UpstreamClient
from providers.types import OPERATIONS

PROVIDERS = ROOT / "providers"


def module_name(path: Path) -> str:
    """``providers/anthropic/stream.py`` -> ``providers.anthropic.stream``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = sorted(PROVIDERS.rglob("*.py"))
MODULES = [module_name(path) for path in FILES]


def test_every_provider_module_imports_without_django() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES)
    code += "assert 'django' not in sys.modules, 'the provider layer imported Django'\n"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _imports(path: Path) -> set[str]:
    """The ``providers.*`` modules ``path`` imports anywhere, for type checking too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("providers."):
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("providers."))
    return found


def test_the_provider_modules_import_each_other_without_a_circle() -> None:
    graph = {module_name(path): _imports(path) for path in FILES}
    assert graph["providers.types"] == set(), "the plain types import nothing of providers/"
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in visiting, f"import circle: {' -> '.join([*path, module])}"
        if module in done:
            return
        visiting.add(module)
        for imported in graph.get(module, ()):
            visit(imported, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, [])


REQUESTS: dict[str, Any] = {
    "embed": None,
    "image_gen": None,
    "text_to_speech": None,
    "transcribe": None,
}
METHODS = {
    "embeddings": "embed",
    "images": "image_gen",
    "speech": "text_to_speech",
    "transcription": "transcribe",
}


@pytest.mark.parametrize("provider_type", sorted(ProviderFactory._registry))
def test_each_provider_type_says_what_it_serves_and_refuses_the_rest(provider_type: str) -> None:
    provider_class = ProviderFactory._registry[provider_type]
    expected = {"openai": OPERATIONS, "anthropic": ("chat",)}[provider_type]
    assert provider_class.operations == expected
    config = ProviderConfig(type=provider_type, base_url="http://upstream.test/v1")
    provider = provider_class("p", config, UpstreamClient())
    for operation, method in METHODS.items():
        if operation not in provider_class.operations:
            with pytest.raises(NotImplementedError):
                asyncio.run(getattr(provider, method)(None, "m"))
        else:
            assert method in vars(provider_class), f"{provider_type} implements {method} itself"


def test_a_provider_type_that_forgets_an_operation_cannot_be_created() -> None:
    class Forgetful(BaseProvider):
        operations = ("chat",)

        async def chat(self, request: Any, upstream_model: str) -> Any: ...

        def stream(self, request: Any, upstream_model: str) -> Any: ...

    config = ProviderConfig(type="openai", base_url="http://upstream.test/v1")
    with pytest.raises(TypeError, match="abstract"):
        Forgetful("p", config, UpstreamClient())  # type: ignore[abstract]


async def test_an_upstream_client_keeps_no_cookie_from_one_call_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider's client serves every tenant: a cookie an upstream (or its CDN) sets on one
    answer is never sent with the next call."""
    from conftest import write_config
    from providers.config import load_config

    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream")
    seen: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, json={}, headers={"set-cookie": "__cf_bm=tenant-a; Path=/"})

    config = load_config(write_config(tmp_path / "config.toml", "http://upstream.test"))
    factory = ProviderFactory(config, transport=lambda _: httpx.MockTransport(upstream))
    client = factory.get("fake").client
    for _ in range(2):
        response = await client.get("http://upstream.test/v1/models")
        assert response.headers["set-cookie"].startswith("__cf_bm=")
    assert seen == [None, None]
    assert not client.cookies
    await factory.aclose()


async def test_the_real_transport_keeps_no_cookie_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same over the wire, through httpx over aiohttp as production runs it: aiohttp's own
    session would keep the cookie and send it with every later call to that host."""
    from aiohttp import web

    from conftest import write_config
    from providers.config import load_config

    seen: list[str | None] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        response = web.json_response({"object": "list", "data": []})
        response.set_cookie("__cf_bm", "tenant-a", path="/")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-upstream")
    base = f"http://localhost:{port}/v1"  # a name: aiohttp's jar takes no cookie from an address
    config = load_config(write_config(tmp_path / "config.toml", base))
    factory = ProviderFactory(config)  # the default transport: aiohttp's
    client = factory.get("fake").client
    try:
        for _ in range(2):
            request = client.upstream("GET", httpx.URL(base + "/models"), {})
            response = await client.send_upstream(request)
            await response.aread()
            await response.aclose()
            assert response.headers["set-cookie"].startswith("__cf_bm=")
    finally:
        await factory.aclose()
        await runner.cleanup()
    assert seen == [None, None]


@pytest.mark.parametrize(
    ("method", "headers", "content"),
    [
        ("POST", {"content-type": "application/json", "authorization": "Bearer k"}, b'{"a":1}'),
        ("POST", {"Accept": "text/event-stream", "user-agent": "tollgate"}, b"x" * 70_000),
        ("POST", {"content-type": "application/json"}, None),
        ("GET", {"authorization": "Bearer k"}, None),
        ("DELETE", {"X-Custom": "1", "x-custom": "2"}, None),
    ],
)
def test_an_upstream_request_is_the_one_build_request_makes(
    method: str, headers: dict[str, str], content: bytes | None
) -> None:
    """``UpstreamClient.upstream`` puts a request together its own way: the same method, URL,
    headers (names regardless of case; the given ones over the client's), body and timeouts."""
    client = UpstreamClient(timeout=httpx.Timeout(30, connect=5))
    url = httpx.URL("https://api.example.test:8443/v1/chat/completions")
    ours = client.upstream(method, url, headers, content)
    httpx_own = client.build_request(method, url, headers=headers, content=content)

    def key(request: httpx.Request) -> list[tuple[bytes, bytes]]:
        return sorted((name.lower(), value) for name, value in request.headers.raw)

    assert (ours.method, ours.url, key(ours)) == (httpx_own.method, httpx_own.url, key(httpx_own))
    assert ours.content == httpx_own.content == (content or b"")
    assert ours.extensions == httpx_own.extensions
