"""The process-wide singletons: config, provider factory and ledger writer.

Created on first use and torn down by the ASGI lifespan (``gateway.asgi``). Tests swap them with
``install`` to fake the upstream or to flush the ledger by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from gateway.ledger import LedgerWriter
from providers.config import GatewayConfig, load_config
from providers.factory import ProviderFactory


@dataclass
class Runtime:
    config: GatewayConfig
    factory: ProviderFactory
    ledger: LedgerWriter

    async def aclose(self) -> None:
        await self.factory.aclose()
        self.ledger.stop()


_runtime_cache: Runtime | None = None


def build_runtime() -> Runtime:
    config = load_config(settings.TOLLGATE_CONFIG)
    return Runtime(
        config=config,
        factory=ProviderFactory(config),
        ledger=LedgerWriter(
            spool_path=settings.TOLLGATE_LEDGER_SPOOL,
            flush_seconds=settings.TOLLGATE_LEDGER_FLUSH_SECONDS,
        ),
    )


def get_runtime() -> Runtime:
    global _runtime_cache
    if _runtime_cache is None:
        _runtime_cache = build_runtime()
    return _runtime_cache


def install(runtime: Runtime | None) -> None:
    """Replace the process's runtime (tests), or forget it (``None``) so the next use rebuilds."""
    global _runtime_cache
    _runtime_cache = runtime
