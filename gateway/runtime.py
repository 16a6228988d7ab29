"""The process-wide singletons: config, provider factory, ledger writer, upstream keys and policy.

Created on first use and torn down by the ASGI lifespan (``gateway.asgi``). Tests swap them with
``install`` to fake the upstream or to flush the ledger by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from gateway.credentials import CredentialPool
from gateway.ledger import LedgerWriter
from gateway.policy import Policy
from providers.config import GatewayConfig, load_config
from providers.factory import ProviderFactory


@dataclass
class Runtime:
    config: GatewayConfig
    factory: ProviderFactory
    ledger: LedgerWriter
    credentials: CredentialPool = field(default_factory=CredentialPool)
    policy: Policy = field(default_factory=Policy)

    async def aclose(self) -> None:
        await self.credentials.stop()
        await self.factory.aclose()
        await self.policy.aclose()
        self.ledger.stop()


_runtime_cache: Runtime | None = None


def build_runtime() -> Runtime:
    config = load_config(settings.TOLLGATE_CONFIG)
    credentials = CredentialPool()
    return Runtime(
        config=config,
        factory=ProviderFactory(config, credentials=credentials.get),
        ledger=LedgerWriter(
            settings.TOLLGATE_LEDGER_DIR,
            flush_seconds=settings.TOLLGATE_LEDGER_FLUSH_SECONDS,
            journal=settings.TOLLGATE_LEDGER_JOURNAL,
            fsync=settings.TOLLGATE_LEDGER_FSYNC,
            replay_seconds=settings.TOLLGATE_LEDGER_REPLAY_SECONDS,
            legacy_spools=settings.LEGACY_LEDGER_SPOOLS,
        ),
        credentials=credentials,
        policy=Policy.from_settings(settings.REDIS_URL),
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
