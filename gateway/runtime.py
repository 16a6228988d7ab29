"""The process-wide singletons: config, provider factory, ledger writer, upstream keys and policy.

Created on first use, started and torn down by the ASGI lifespan (``tollgate.asgi``). Tests swap
them with ``install`` to fake the upstream or to flush the ledger by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings

from gateway.drain import Drain
from gateway.limits.policy import Policy
from gateway.outage import read_database
from gateway.routing.health import Health
from gateway.routing.router import Router
from gateway.routing.shared import SharedHealth
from gateway.telemetry import CallObserver, FlushingObserver, call_tracer
from gateway.telemetry.logs import RequestLog
from gateway.telemetry.metrics import Metrics
from gateway.upstream_keys.credentials import CredentialPool, check_secret_key
from gateway.usage.ledger import LedgerWriter
from providers.config import GatewayConfig, load_config
from providers.errors import ServiceUnavailable
from providers.factory import ProviderFactory

log = logging.getLogger("tollgate")


@dataclass
class Runtime:
    config: GatewayConfig
    factory: ProviderFactory
    ledger: LedgerWriter
    credentials: CredentialPool = field(default_factory=CredentialPool)
    policy: Policy = field(default_factory=Policy)
    router: Router = field(init=False)
    """Chooses each attempt's deployment, retries and falls back (``gateway.routing``)."""
    shared_health_url: str = ""
    """REDIS_URL: the routers' health is shared by every process (``gateway.routing.shared``)."""
    shared_health: SharedHealth | None = field(init=False, default=None)
    observers: tuple[CallObserver, ...] = ()
    """Told of every call once it is recorded and answered: metrics, request log, traces
    (``gateway.telemetry``)."""
    metrics: Metrics | None = None
    """The Prometheus metrics, also among ``observers`` (TOLLGATE_METRICS; None: off)."""
    drain: Drain = field(default_factory=Drain)
    """The requests in flight, cut at the end of a stopping worker's grace (``gateway.drain``)."""
    _purge: asyncio.Task[None] | None = field(init=False, default=None)
    """The daily purge of expired stored responses (``gateway.calls.responses``)."""

    def __post_init__(self) -> None:
        health = Health(self.config.router)
        self.router = Router(self.config.router, health, self.config.models)
        self.credentials.health = health
        if self.shared_health_url:
            self.shared_health = SharedHealth(
                health, self.shared_health_url, settings.TOLLGATE_REDIS_TIMEOUT_SECONDS
            )

    async def start(self) -> None:
        """Read the upstream keys stored in the admin (a missing or wrong TOLLGATE_SECRET_KEY
        raises, naming it), keep them fresh, and start the ledger writer."""
        await self._load_credentials_unless_database_down()
        self.credentials.start(settings.TOLLGATE_CREDENTIALS_REFRESH_SECONDS)
        self.ledger.start()
        if self.shared_health is not None:
            self.shared_health.start()
        from gateway.calls.responses import purge_forever  # the calls import this module

        self._purge = asyncio.get_running_loop().create_task(purge_forever())
        if self.metrics is not None:
            await self.metrics.start(self)

    async def aclose(self) -> None:
        """Close the upstream clients, send pending counter updates, write every queued row,
        send the spans still batched."""
        await self.credentials.stop()
        if self._purge is not None:
            self._purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purge
        if self.shared_health is not None:
            await self.shared_health.stop()
        await self.factory.aclose()
        await self.policy.aclose()
        await sync_to_async(self.ledger.stop, thread_sensitive=False)()
        if self.metrics is not None:
            await self.metrics.stop()
        for observer in self.observers:
            if isinstance(observer, FlushingObserver):
                await asyncio.to_thread(observer.shutdown)

    async def _load_credentials_unless_database_down(self) -> None:
        """With the database down, start without the stored keys (the refresh task reads them
        once it is back) rather than refuse to start: the gateway serves what it can."""

        def load() -> None:
            check_secret_key()
            self.credentials.load()

        try:
            await read_database(load, "the upstream keys")
        except ServiceUnavailable:
            log.warning(
                "starting without the upstream keys stored in the admin: the database is "
                "unavailable; they are read as soon as it is back"
            )


_runtime_cache: Runtime | None = None


def build_runtime() -> Runtime:
    config = load_config(settings.TOLLGATE_CONFIG)
    credentials = CredentialPool()
    ledger = LedgerWriter(
        settings.TOLLGATE_LEDGER_DIR,
        flush_seconds=settings.TOLLGATE_LEDGER_FLUSH_SECONDS,
        journal=settings.TOLLGATE_LEDGER_JOURNAL,
        fsync=settings.TOLLGATE_LEDGER_FSYNC,
        replay_seconds=settings.TOLLGATE_LEDGER_REPLAY_SECONDS,
        legacy_spools=settings.LEGACY_LEDGER_SPOOLS,
    )
    metrics = None
    if settings.TOLLGATE_METRICS:
        metrics = Metrics(
            settings.TOLLGATE_METRICS_DIR,
            config.models,
            tenant_label=settings.TOLLGATE_METRICS_TENANT_LABEL,
            address=settings.TOLLGATE_METRICS_ADDR,
        )
        ledger.observer = metrics
    observers: list[CallObserver] = [metrics] if metrics is not None else []
    if settings.TOLLGATE_REQUEST_LOG:
        observers.append(RequestLog())
    if settings.TOLLGATE_TRACES and (tracer := call_tracer()) is not None:
        observers.append(tracer)
    return Runtime(
        config=config,
        factory=ProviderFactory(config, credentials=credentials.get),
        ledger=ledger,
        credentials=credentials,
        policy=Policy.from_settings(settings.REDIS_URL),
        shared_health_url=settings.REDIS_URL,
        observers=tuple(observers),
        metrics=metrics,
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
