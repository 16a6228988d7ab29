"""Upstream keys from the admin (``ProviderKey``), picked per call by weight.

Each gateway process keeps the active keys, decrypted, in a ``CredentialPool`` and re-reads them
every ``TOLLGATE_CREDENTIALS_REFRESH_SECONDS`` (default 5) in a background task started by the
ASGI lifespan: an admin change (a new key, a deactivated one, a new weight) reaches every process
within that bound, and no request waits on the database for its upstream key. A provider with no
active key falls back to config.toml's ``api_key_env``.

While the database is down the keys last read stay in use. A process that started while it was
down (so has read none yet) tries every second until it has them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import random
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from gateway.models import ProviderKey
from gateway.outage import read_database
from gateway.routing.health import Health
from gateway.routing.router import key_target
from gateway.upstream_keys import secrets
from providers.errors import ServiceUnavailable

log = logging.getLogger("tollgate.credentials")


@dataclass(frozen=True, slots=True)
class WeightedKeys:
    """One provider's active keys and the running totals of their weights."""

    secrets: tuple[str, ...]
    cumulative: tuple[int, ...]
    targets: tuple[str, ...] = ()
    """Each key's name in the routers' health (``key_target``), computed once per load: a
    hash per call would be paid by every call once any upstream has failed."""

    def pick(self) -> str:
        return self.secrets[self._index()]

    def _index(self) -> int:
        if len(self.secrets) == 1:
            return 0
        return bisect.bisect_right(self.cumulative, random.random() * self.cumulative[-1])

    def pick_usable(self, health: Health) -> str:
        """A key that is not cooling down (``gateway.routing.health``: a 401, 403 or 429 from
        the upstream), by weight; when every key is, the weighted pick all the same."""
        index = self._index()
        key, targets = self.secrets[index], self.targets
        if health.usable(targets[index]):
            return key
        previous = 0
        usable: list[tuple[str, int]] = []
        for secret, target, total in zip(self.secrets, targets, self.cumulative, strict=True):
            weight, previous = total - previous, total
            if weight > 0 and health.usable(target):
                usable.append((secret, weight))
        if not usable:
            return key
        point = random.random() * sum(weight for _, weight in usable)
        for secret, weight in usable:
            point -= weight
            if point < 0:
                return secret
        return usable[-1][0]

    @classmethod
    def of(cls, provider: str, secrets: tuple[str, ...], weights: list[int]) -> WeightedKeys:
        return cls(
            secrets,
            tuple(itertools.accumulate(weights)),
            tuple(key_target(provider, secret) for secret in secrets),
        )


def load_active_keys() -> dict[str, WeightedKeys]:
    """Read and decrypt the active keys (sync: call it off the event loop). Keys of weight 0 are
    kept but never picked. Raises ``ImproperlyConfigured`` naming TOLLGATE_SECRET_KEY when it is
    missing or wrong."""
    rows = list(
        ProviderKey.objects.filter(is_active=True, weight__gt=0)
        .order_by("provider", "pk")
        .values_list("provider", "label", "secret_encrypted", "weight")
    )
    pools: dict[str, WeightedKeys] = {}
    for provider, group in itertools.groupby(rows, key=lambda row: row[0]):
        members = list(group)
        plain = tuple(
            secrets.decrypt(token, f"the upstream key '{provider}: {label}'")
            for _, label, token, _ in members
        )
        pools[provider] = WeightedKeys.of(provider, plain, [weight for *_, weight in members])
    return pools


def check_secret_key() -> None:
    """Raise ``ImproperlyConfigured`` when upstream keys are stored but TOLLGATE_SECRET_KEY is
    missing or does not decrypt them (startup and ``manage.py check``)."""
    if not secrets.is_configured():
        if ProviderKey.objects.exists():
            raise secrets.SecretKeyMissing()
        return
    for label, token in ProviderKey.objects.values_list("label", "secret_encrypted"):
        secrets.decrypt(token, f"the upstream key '{label}'")


class CredentialPool:
    """The process's active upstream keys; ``get`` is the providers' ``CredentialSource``."""

    def __init__(self) -> None:
        self._pools: dict[str, WeightedKeys] = {}
        self.health: Health | None = None
        """Set by the runtime: keys cooling down are skipped while another is usable."""
        self.loaded = False
        """Whether the keys were read at least once (not yet, after a start without database)."""
        self._task: asyncio.Task[None] | None = None

    def get(self, provider: str) -> str | None:
        pool = self._pools.get(provider)
        if pool is None:
            return None
        health = self.health
        if health is None or not health.breakers:
            return pool.pick()  # the hot path: no upstream has failed
        return pool.pick_usable(health)

    def replace(self, pools: dict[str, WeightedKeys]) -> None:
        self._pools = pools

    def load(self) -> None:
        """Sync, from the database: at startup, from a management command or a test."""
        self.replace(load_active_keys())
        self.loaded = True

    async def refresh(self) -> None:
        """Re-read the keys; ``ServiceUnavailable`` (the keys kept) when the database is down."""
        self.replace(await read_database(load_active_keys, "the upstream keys"))
        self.loaded = True

    def start(self, interval: float) -> None:
        """Refresh every ``interval`` seconds in the background, on the running loop."""
        if self._task is None and interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever(interval))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval if self.loaded else min(interval, 1.0))
            try:
                await self.refresh()
            except ServiceUnavailable:
                pass  # gateway.outage logs the outage, once per interval; the keys are kept
            except (DatabaseError, ImproperlyConfigured) as exc:
                # Keep the keys we have; say why (never the secrets: the message has none).
                log.error("could not refresh the upstream keys: %s", exc)


def set_secret(key: ProviderKey, plaintext: str) -> None:
    """Store ``plaintext`` encrypted on ``key``, and its last 4 characters in clear."""
    key.secret_encrypted = secrets.encrypt(plaintext)
    key.last4 = plaintext[-4:]
